"""A whole local cluster started by the console script's module (``epd up``) on loopback, for tests.

``start_cluster(model, log_dir, *extra_flags)`` is a context manager: it runs ``epd up`` with free
ports, waits for "cluster ready", yields an ``EpdCluster`` and stops it with Ctrl-C (SIGINT).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shared.supervisor import REPO_ROOT


@dataclass
class EpdCluster:
    proc: subprocess.Popen
    url: str  # the router's base URL
    log_dir: Path
    model: str

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
    model: Path, log_dir: Path, *flags: str, command: tuple[str, ...] = (), timeout: float = 150
) -> Iterator[EpdCluster]:
    """``epd up --model MODEL --base-port 0 --log-dir LOG_DIR FLAGS...``; ``command`` replaces
    ``python -m router.cli`` (e.g. the installed console script)."""
    cmd = [
        *(command or (sys.executable, "-m", "router.cli")), "up", "--model", str(model), "--base-port", "0",
        "--log-dir", str(log_dir), *flags,
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    url = ""
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("OpenAI API at "):
                url = line.split()[-1].removesuffix("/v1")
            if "cluster ready" in line or not line:
                break
        assert url and any("cluster ready" in ln for ln in lines), "".join(lines)
        yield EpdCluster(proc, url, log_dir, model.name)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
