"""A router that dies: its clients' streams close, and the workers notice its silence (no more
``RouterHeartbeat``) and free what it had asked for; the other router serves on."""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request
from pathlib import Path

import httpx
import pytest

from bench.elastic import JSON, Scenario, free_port, worker
from shared.supervisor import ServiceSpec, Supervisor

pytestmark = pytest.mark.cluster


def gauge(http: str, name: str) -> float:
    with urllib.request.urlopen(f"{http}/metrics", timeout=5) as resp:
        m = re.search(rf"^{name} (\S+)$", resp.read().decode(), re.M)
    assert m, name
    return float(m.group(1))


def test_workers_drop_a_dead_routers_requests(tmp_path: Path) -> None:
    ports = {r: free_port() for r in ("router-a", "router-b")}
    inboxes = [f"tcp://127.0.0.1:{p}" for p in ports.values()]
    sc = Scenario(decode_flags=("--no-compile-decode",))
    timeout = ("--router-timeout-s", "2")
    specs = [
        worker(sc, "encoder-0", "services.encoder", inboxes, "--port", "0", "--http-port", "0", *timeout),
        worker(sc, "prefill-0", "services.prefill", inboxes, "--port", "0", "--inbox-port", "0", "--http-port", "0",
               *timeout),
        worker(sc, "decode-0", "services.decode", inboxes, "--port", "0", "--kv-port", "0", "--http-port", "0",
               *timeout),
        *(ServiceSpec(r, "router", ("--port", "0", "--inbox-port", str(p), "--heartbeat-timeout-s", "3"))
          for r, p in ports.items()),
    ]  # fmt: skip
    sup = Supervisor(specs, tmp_path)
    ready = sup.start(timeout=600)
    try:
        a, b, decode = ready["router-a"]["http"], ready["router-b"]["http"], ready["decode-0"]["http"]
        body = {"model": "demo", "messages": [{"role": "user", "content": "count"}], "max_tokens": 3000,
                "ignore_eos": True, "stream": True}  # fmt: skip
        with httpx.Client(timeout=60) as client:
            body["model"] = client.get(f"{a}/v1/models").json()["data"][0]["id"]
            with client.stream(
                "POST", f"{a}/v1/chat/completions", content=json.dumps(body), headers=JSON
            ) as resp:
                lines = resp.iter_lines()
                while not next(lines).startswith("data: {"):  # streaming: the request is in decode
                    pass
                deadline = time.monotonic() + 20  # the gauge follows at the next load report
                while gauge(decode, "decode_running_requests") != 1 and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert gauge(decode, "decode_running_requests") == 1
                sup.children["router-a"].proc.send_signal(signal.SIGKILL)
                with pytest.raises(httpx.HTTPError):  # the client's stream closes, it does not hang
                    for _ in lines:
                        pass
            # the decode worker hears no heartbeat from router-a and frees its request
            deadline = time.monotonic() + 20
            while gauge(decode, "decode_running_requests") and time.monotonic() < deadline:
                time.sleep(0.2)
            assert gauge(decode, "decode_running_requests") == 0
            log = (tmp_path / "decode-0.log").read_text()
            assert re.search(r"aborted: its router tcp://127\.0\.0\.1:\d+ is gone", log), log[-2000:]
            # router-b serves on
            short = {**body, "max_tokens": 4, "stream": False}
            answer = client.post(f"{b}/v1/chat/completions", content=json.dumps(short), headers=JSON)
            assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 4
    finally:
        sup.stop(timeout=30)
