"""Bounded admission and deadlines on a cluster started with ``--max-inflight 2`` and a 3 s request
timeout: a third concurrent request gets 503 with Retry-After; a request that outlives its deadline
gets an error (504 before streaming, an error event mid-stream) and leaves nothing behind in any
service."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from tests.cluster import EpdCluster, start_cluster, wait_for

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def small(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EpdCluster]:
    with start_cluster(
        ckpt, tmp_path_factory.mktemp("limits"), "--dtype", "float32",
        "--router-arg=--max-inflight=2", "--router-arg=--request-timeout-s=3",
        "--router-arg=--max-model-len=8192", "--router-arg=--heartbeat-timeout-s=15",
    ) as c:  # fmt: skip
        yield c


def body(model: str, max_tokens: int, stream: bool = False) -> dict:
    return {
        "model": model, "messages": [{"role": "user", "content": "Tell a long story"}],
        "max_tokens": max_tokens, "ignore_eos": True, "stream": stream, "temperature": 0,
    }  # fmt: skip


def freed(c: EpdCluster, deadline_s: float = 10) -> bool:
    def check() -> bool:
        return (
            not c.get_json(c.url + "/debug/requests")["requests"]
            and c.metric("decode-0", "decode_running_requests") == 0
            and c.metric("decode-0", "decode_queued_requests") == 0
            and c.metric("prefill-0", "prefill_running_requests") == 0
            and c.metric("prefill-0", "prefill_free_blocks") == c.metric("prefill-0", "prefill_total_blocks")
            and c.metric("decode-0", "decode_free_blocks") == c.metric("decode-0", "decode_total_blocks")
        )

    return wait_for(check, deadline_s, interval=0.2)


def test_a_full_router_answers_503_with_retry_after(small):
    model = small.get_json(small.url + "/v1/models")["data"][0]["id"]
    with ExitStack() as stack:
        http = stack.enter_context(httpx.Client(base_url=small.url, timeout=30))
        lines = []  # the line iterators must live: dropping one closes its response
        for _ in range(2):  # two long streams hold both admission slots
            r = stack.enter_context(http.stream("POST", "/v1/chat/completions", json=body(model, 3000, True)))
            assert r.status_code == 200
            lines.append(r.iter_lines())
            next(lines[-1])
        third = http.post("/v1/chat/completions", json=body(model, 4))
        assert third.status_code == 503, third.text
        assert third.headers["retry-after"] == "1"
        assert third.json()["error"]["type"] == "overloaded_error"
    assert freed(small), small.logs()  # the two streams were closed by the client
    assert httpx.post(small.url + "/v1/chat/completions", json=body(model, 4), timeout=30).status_code == 200


def test_a_request_past_its_deadline_is_ended_everywhere(small):
    model = small.get_json(small.url + "/v1/models")["data"][0]["id"]
    start = time.monotonic()
    r = httpx.post(small.url + "/v1/chat/completions", json=body(model, 6000), timeout=30)
    took = time.monotonic() - start
    assert r.status_code == 504 and r.json()["error"]["type"] == "timeout_error", r.text
    assert 2.5 < took < 10
    assert freed(small), small.logs()
    events = []
    with httpx.stream(
        "POST", small.url + "/v1/chat/completions", json=body(model, 6000, True), timeout=30
    ) as s:
        assert s.status_code == 200
        events = [json.loads(ln[6:]) for ln in s.iter_lines() if ln.startswith("data: {")]
    assert events and "error" in events[-1], events[-1:]
    assert freed(small), small.logs()
    print(
        f"\n504 after {took:.1f}s; streaming ended with {events[-1]['error']['message']!r} after {len(events)} events"
    )
