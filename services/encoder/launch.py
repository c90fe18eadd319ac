"""Start an encoder as a child process and wait until it serves (for launchers, tests, benchmarks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


class EncoderProcess:
    """A running ``python -m services.encoder``; ``zmq`` and ``http`` are its bound endpoints."""

    def __init__(self, proc: subprocess.Popen, zmq: str, http: str, log_path: Path) -> None:
        self.proc = proc
        self.zmq = zmq
        self.http = http
        self.log_path = log_path

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.http + path, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def metric(self, name: str, labels: str = "") -> float:
        """The current value of one sample on /metrics, e.g. ``metric("encoder_vision_forwards_total")``."""
        _, body = self.get("/metrics")
        key = f"{name}{{{labels}}}" if labels else name
        for line in body.decode().splitlines():
            if line.startswith(key + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        return self.proc.returncode


def start_encoder(
    model: str | Path, *args: str, log_dir: str | Path | None = None, timeout: float = 120.0
) -> EncoderProcess:
    """Start an encoder on free loopback ports with extra flags ``args``; raise if it is not ready
    within ``timeout`` seconds (the child is killed and its log is in the message)."""
    work = Path(log_dir or tempfile.mkdtemp(prefix="encoder-"))
    work.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="encoder-", suffix=".json", dir=work)
    os.close(fd)
    ready, log_path = Path(name), Path(name).with_suffix(".log")
    ready.unlink()
    cmd = [sys.executable, "-m", "services.encoder", "--model", str(model), "--port", "0", "--http-port", "0"]
    cmd += ["--ready-file", str(ready), *args]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError(
                f"encoder did not start (rc {proc.returncode}):\n{log_path.read_text()[-4000:]}"
            )
        time.sleep(0.05)
    info = json.loads(ready.read_text())
    return EncoderProcess(proc, info["zmq"], info["http"], log_path)
