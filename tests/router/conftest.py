"""A whole local cluster started by the console script (``epd up``) on a tiny checkpoint, once per
module: two encoders, one prefill, two decode workers and the router, all on free loopback ports.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.supervisor import REPO_ROOT
from tests.engine.conftest import SPEC


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


@pytest.fixture(scope="package")
def ckpt(tiny_checkpoint) -> Path:
    return tiny_checkpoint(**SPEC)


@pytest.fixture(scope="package")
def cluster(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EpdCluster]:
    log_dir = tmp_path_factory.mktemp("epd")
    cmd = [
        sys.executable, "-m", "router.cli", "up", "--model", str(ckpt), "--base-port", "0",
        "--encoders", "2", "--prefills", "1", "--decodes", "2", "--dtype", "float32", "--log-dir", str(log_dir),
        "--decode-arg=--report-interval-s=0.2", "--router-arg=--max-model-len=4096",
        "--router-arg=--max-images=4",
        # Two cores run ~8 processes here: a busy decode worker can be silent for seconds.
        "--router-arg=--heartbeat-timeout-s=15",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    url = ""
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("OpenAI API at "):
                url = line.split()[-1].removesuffix("/v1")
            if "cluster ready" in line or not line:
                break
        assert url and any("cluster ready" in ln for ln in lines), "".join(lines)
        yield EpdCluster(proc, url, log_dir, ckpt.name)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
