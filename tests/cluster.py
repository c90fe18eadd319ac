"""A whole local cluster started by the console script's module (``epd up``) on loopback, for tests.

``start_cluster(model, log_dir, *extra_flags)`` is a context manager: it runs ``epd up`` with free
ports, waits for "cluster ready", yields an ``EpdCluster`` and stops it with Ctrl-C (SIGINT); a
cluster that does not come up raises ``bench.servers.ServerError`` with its logs. ``model=None``
leaves ``--model`` out (``epd up`` serves the bundled demo model).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.servers import Server, serve


@dataclass
class EpdCluster:
    url: str  # the router's base URL
    log_dir: Path
    model: str
    proc: subprocess.Popen | None = None  # the ``epd up`` process

    def ready(self, name: str) -> dict:
        return json.loads((self.log_dir / f"{name}.ready.json").read_text())

    def get_json(self, url: str) -> dict:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read())

    def metric(self, service: str, name: str, labels: str = "") -> float:
        base = self.url if service == "router" else self.ready(service)["http"]
        with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
            body = resp.read().decode()
        key = f"{name}{{{labels}}}" if labels else name
        return sum(float(ln.rsplit(" ", 1)[1]) for ln in body.splitlines() if ln.startswith(key + " "))

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in self.log_dir.glob("*.log")
        )


@contextlib.contextmanager
def start_cluster(
    model: Path | None,
    log_dir: Path,
    *flags: str,
    command: tuple[str, ...] = (),
    timeout: float = 150,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[EpdCluster]:
    """``epd up [--model MODEL] --base-port 0 --log-dir LOG_DIR FLAGS...`` through the benchmarks'
    launcher (``bench/servers.py``); ``command`` replaces ``python -m router.cli`` (e.g. the
    installed console script), ``cwd`` and ``env`` (the whole environment) the test's."""
    cmd = (
        *(command or (sys.executable, "-m", "router.cli")), "up",
        *(("--model", str(model)) if model is not None else ()),
        "--base-port", "0", "--log-dir", str(log_dir), *flags,
    )  # fmt: skip
    procs: list[subprocess.Popen] = []
    server = Server("epd", cmd, "cluster ready", timeout, cwd=cwd, env=env)
    with serve(server, log_dir, started=procs.append) as url:
        yield EpdCluster(url.removesuffix("/v1"), log_dir, model.name if model else "demo", procs[0])


def wait_for(check: Callable[[], bool], timeout: float = 20.0, interval: float = 0.1) -> bool:
    """Poll ``check`` until it holds or ``timeout`` seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()
