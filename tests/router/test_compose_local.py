"""Every service of docker-compose.yml, run as a local process on loopback, answers a chat.

Each service runs from the bare install the image has (tests/bare_install.py: the wheel with its
declared dependencies only, in a fresh venv): the venv's Python in isolated mode (``-I``) for
``python`` in the commands and healthchecks, from a working directory outside the checkout. The
compose file is resolved by a real compose implementation (``config --format json``); each
service's command, environment and healthcheck are then translated for one machine: service host
names become 127.0.0.1, every port a service listens on gets a free local port (two decode
workers share port numbers in their containers), the model volume becomes its host path and a
named volume (the compile cache) a folder of the test's own. The services start in dependency
order, each waits for its own healthcheck, and the official openai client asks the bundled demo
model about a picture through the router's published port.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from shared.assets import DEMO_MODEL_DIR
from tests.bare_install import BareInstall
from tests.demo_pictures import ask_red_circle
from tests.repo import REPO_ROOT
from tests.router.test_compose import compose_binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolved_services(binary: Path) -> dict[str, dict]:
    env = {**os.environ, "EPD_TORCH_THREADS": "1", "EPD_MODEL_DIR": str(DEMO_MODEL_DIR)}
    out = subprocess.run(
        [str(binary), "-f", "docker-compose.yml", "config", "--format", "json"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    services = json.loads(out.stdout)["services"]
    return {name: s for name, s in services.items() if not s.get("profiles")}


class Translation:
    """Container names and ports -> loopback and free ports, for one machine."""

    def __init__(
        self, services: dict[str, dict], volume_root: Path, python: tuple[str, ...] = (sys.executable,)
    ) -> None:
        self.python = python  # what ``python`` in a command becomes
        self.names = set(services)
        self.ports: dict[tuple[str, str], str] = {}
        for name, s in services.items():
            cmd = s["command"]
            for flag, value in zip(cmd, cmd[1:], strict=False):
                if flag.startswith("--") and flag.endswith("port") and value.isdigit():
                    self.ports[(name, value)] = str(free_port())
        self.volumes = {  # bind mounts become their host path, named volumes a folder of volume_root
            v["target"]: v["source"] if v["type"] == "bind" else str(volume_root / v["source"])
            for s in services.values()
            for v in s.get("volumes", [])
        }

    def __call__(self, text: str, service: str) -> str:
        def remote(m: re.Match) -> str:
            host, port = m.group(1), m.group(2)
            owner = service if host in ("127.0.0.1", "localhost") else host
            return f"127.0.0.1:{self.ports.get((owner, port), port)}"

        text = re.sub(r"([A-Za-z0-9.\-]+):(\d{2,5})\b", remote, text)
        for target, source in self.volumes.items():
            text = text.replace(target, source)
        return text.replace("0.0.0.0", "127.0.0.1")

    def host(self, value: str) -> str:
        return "127.0.0.1" if value in self.names or value == "0.0.0.0" else value

    def environment(self, env: dict[str, str], service: str) -> dict[str, str]:
        return {k: self.host(v) if k.endswith("HOST") else self(v, service) for k, v in env.items()}

    def command(self, cmd: list[str], service: str) -> list[str]:
        out = list(self.python) if cmd[0] == "python" else [cmd[0]]
        for flag, value in zip(cmd, cmd[1:], strict=False):
            if flag.endswith("-port") and (service, value) in self.ports:
                out.append(self.ports[(service, value)])
            else:
                out.append(self.host(value) if flag.endswith("-host") else self(value, service))
        return out


def start_order(services: dict[str, dict]) -> list[str]:
    order: list[str] = []
    while len(order) < len(services):
        order += sorted(
            n for n, s in services.items() if n not in order and set(s.get("depends_on") or {}) <= set(order)
        )
    return order


def healthy(check: list[str], deadline: float, bare: BareInstall, cwd: Path) -> bool:
    while time.monotonic() < deadline:
        if subprocess.run(check, capture_output=True, timeout=10, cwd=cwd, env=bare.env()).returncode == 0:
            return True
        time.sleep(0.5)
    return False


def test_compose_services_run_as_local_processes(tmp_path, bare_install: BareInstall):
    t0 = time.monotonic()
    services = resolved_services(compose_binary())
    assert {"router", "encoder", "prefill", "decode-0", "decode-1"} <= set(services)
    work = tmp_path  # outside the checkout, as the image's working directory is
    tr = Translation(services, work / "volumes", python=(str(bare_install.python), "-I"))
    assert not work.resolve().is_relative_to(REPO_ROOT)
    procs: dict[str, subprocess.Popen] = {}
    try:
        for name in start_order(services):
            s = services[name]
            env = {**bare_install.env(), **tr.environment(s.get("environment") or {}, name)}
            log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
            procs[name] = subprocess.Popen(
                tr.command(s["command"], name), cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT
            )
            if s.get("depends_on") or name == "router":
                for dep in s.get("depends_on") or {}:
                    check = tr.command(services[dep]["healthcheck"]["test"][1:], dep)
                    ok = healthy(check, time.monotonic() + 120, bare_install, work)
                    assert ok, (tmp_path / f"{dep}.log").read_text()[-3000:]
        for name, s in services.items():
            check = tr.command(s["healthcheck"]["test"][1:], name)
            ok = healthy(check, time.monotonic() + 120, bare_install, work)
            assert ok, (tmp_path / f"{name}.log").read_text()[-3000:]
        site = bare_install.site_packages()
        for name in services:  # every service runs the installed code (shared/about.py's line)
            log_text = (tmp_path / f"{name}.log").read_text(errors="replace")
            assert f"({site}/" in log_text, f"{name} does not run from {site}:\n{log_text[-3000:]}"

        published = services["router"]["ports"][0]["target"]
        url = f"http://127.0.0.1:{tr.ports[('router', str(published))]}/v1"
        answer = ask_red_circle(url)
        print(
            f"\ncompose services as processes of the bare install ({bare_install.summary()}): "
            f"{sorted(procs)}; answer: {answer!r}; {time.monotonic() - t0:.0f} s"
        )
        assert "red" in answer.lower()
        decodes = httpx.get(url.removesuffix("/v1") + "/debug/requests").json()["decodes"]
        assert sorted(d["kv"] for d in decodes) == sorted(
            f"tcp://127.0.0.1:{tr.ports[(n, '5801')]}" for n in ("decode-0", "decode-1")
        )  # each decode worker advertises the address it is reached by, not 0.0.0.0
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    codes = {n: p.returncode for n, p in procs.items()}
    assert all(c in (0, -signal.SIGTERM) for c in codes.values()), codes


# Packaging: the services run from the bare install (built once per session, ~2 min on 2 cores).
pytestmark = [pytest.mark.packaging, pytest.mark.timeout(900)]
