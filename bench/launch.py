"""Start one service (``python -m services.<name>``) as a child process and wait until it serves
(tests and benchmarks; ``epd up`` uses ``shared.supervisor``).

The service writes a JSON ready file (its bound endpoints and pid) once it serves; tests,
launchers and benchmarks read it here. The child's output goes to a log file next to it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


class ServiceProcess:
    """A running service; ``info`` is its ready file (endpoints by name, ``http``, ``pid``)."""

    def __init__(self, proc: subprocess.Popen, info: dict[str, Any], log_path: Path) -> None:
        self.proc = proc
        self.info = info
        self.http: str = info["http"]
        self.log_path = log_path

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.http + path, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def metric(self, name: str, labels: str = "") -> float:
        _, body = self.get("/metrics")
        key = f"{name}{{{labels}}}" if labels else name
        for line in body.decode().splitlines():
            if line.startswith(key + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: the process vanishes without telling anyone (failure tests)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        return self.proc.returncode


def start_service(
    module: str, model: str | Path, *args: str, log_dir: str | Path | None = None, timeout: float = 120.0
) -> ServiceProcess:
    """Start ``python -m module --model model`` on free loopback ports (``--*-port 0`` is the
    service's business: pass them in ``args``) and wait for its ready file; on failure the child
    is killed and its log is in the error."""
    work = Path(log_dir or tempfile.mkdtemp(prefix=module.rsplit(".", 1)[-1] + "-"))
    work.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=module.rsplit(".", 1)[-1] + "-", suffix=".json", dir=work)
    os.close(fd)
    ready, log_path = Path(name), Path(name).with_suffix(".log")
    ready.unlink()
    cmd = [sys.executable, "-m", module, "--model", str(model), "--ready-file", str(ready), *args]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError(
                f"{module} did not start (rc {proc.returncode}):\n{log_path.read_text()[-4000:]}"
            )
        time.sleep(0.05)
    return ServiceProcess(proc, json.loads(ready.read_text()), log_path)
