"""``epd up`` and the supervisor: real service processes on loopback, restart on crash, clean stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from shared.supervisor import ServiceSpec, Supervisor
from tests.repo import REPO_ROOT

pytestmark = pytest.mark.cluster


def encoder_spec(model, name="encoder-0") -> ServiceSpec:
    args = ("--model", str(model), "--port", "0", "--http-port", "0", "--torch-threads", "1")
    return ServiceSpec(name, "services.encoder", args)


def is_ready(info: dict) -> bool:
    with urllib.request.urlopen(info["http"] + "/ready", timeout=5) as resp:
        return resp.status == 200


def test_supervisor_restarts_a_crashed_service(tiny_checkpoint, tmp_path):
    sup = Supervisor([encoder_spec(tiny_checkpoint())], tmp_path)
    stop = threading.Event()
    try:
        ready = sup.start(timeout=120)
        assert is_ready(ready["encoder-0"])
        first = sup.children["encoder-0"].proc
        watcher = threading.Thread(target=sup.watch, args=(stop, 0.1), daemon=True)
        watcher.start()
        first.kill()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            child = sup.children["encoder-0"]
            if child.proc is not first and child.info is not None:
                break
            time.sleep(0.1)
        child = sup.children["encoder-0"]
        assert child.proc is not first and child.proc.poll() is None
        assert is_ready(child.info)
    finally:
        stop.set()
        sup.stop()
    assert all(c.proc.poll() is not None for c in sup.children.values())


def test_epd_up_starts_and_stops_on_ctrl_c(tiny_checkpoint, tmp_path):
    cmd = [sys.executable, "-m", "router.cli", "up", "--model", str(tiny_checkpoint())]
    cmd += ["--base-port", "0", "--log-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "cluster ready" in line or not line:
                break
        assert any("cluster ready" in line for line in lines), "".join(lines)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "cluster stopped" in out
    # No service outlives the command.
    ready = next(tmp_path.glob("encoder-0.ready.json")).read_text()
    pid = int(json.loads(ready)["pid"])
    try:
        os.kill(pid, 0)
        raise AssertionError(f"encoder {pid} still running")
    except ProcessLookupError:
        pass


def test_epd_up_refuses_a_missing_model(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "router.cli", "up", "--model", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "not a checkpoint directory" in out.stderr
