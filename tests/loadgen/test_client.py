"""The streaming client against canned responses (httpx.MockTransport), and the two schedules."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import numpy as np
import pytest

from shared.loadgen.client import RequestRecord, send
from shared.loadgen.schedule import arrival_times, closed_loop, open_loop
from shared.loadgen.sse import parse_line

pytestmark = pytest.mark.unit


def sse(*events: dict | str) -> bytes:
    return b"".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n".encode() for e in events)


def delta(text: str) -> dict:
    return {"choices": [{"index": 0, "delta": {"content": text}}]}


def test_parse_line() -> None:
    assert parse_line(": ping") is None and parse_line("") is None and parse_line("event: x") is None
    assert parse_line("data: [DONE]").done
    assert parse_line(b'data: {"choices":[{"delta":{"content":"hi"}}]}').content == "hi"
    assert parse_line('data:{"choices":[{"delta":{"reasoning_content":"hm"}}]}').content == "hm"
    assert parse_line('data: {"choices":[],"usage":{"completion_tokens":3}}').usage == {
        "completion_tokens": 3
    }
    assert parse_line('data: {"error":{"message":"boom"}}').error == "boom"
    assert parse_line("data: {oops").error.startswith("malformed")


def post(handler, timeout: float = 5.0) -> RequestRecord:
    async def go() -> RequestRecord:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await send(
                client, "http://x/v1/chat/completions", b"{}", {}, RequestRecord(0), 0.0, timeout
            )

    return asyncio.run(go())


def test_send_reads_content_and_usage() -> None:
    body = sse(
        {"choices": [{"delta": {"role": "assistant", "content": ""}}]},
        delta("Hel"), delta("lo"), delta(" world"),
        {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 4}}, "[DONE]",
    )  # fmt: skip
    r = post(lambda req: httpx.Response(200, content=body))
    assert r.success and r.error_kind is None
    assert (r.prompt_tokens, r.completion_tokens, r.content_chunks, len(r.itl_s)) == (12, 4, 3, 2)
    assert 0 <= r.ttft_s <= r.e2e_s and r.tpot_s is not None


def test_send_without_usage_counts_chunks() -> None:
    r = post(lambda req: httpx.Response(200, content=sse(delta("a"), delta("b"), "[DONE]")))
    assert r.success and not r.usage_reported and r.completion_tokens == 2 and r.prompt_tokens is None


@pytest.mark.parametrize(
    "response, kind",
    [
        (httpx.Response(503, json={"error": {"message": "overloaded"}}), "http_503"),
        (httpx.Response(200, content=sse(delta("a"), {"error": {"message": "worker died"}})), "stream_error"),
        (httpx.Response(200, content=sse("[DONE]")), "no_content"),
    ],
)
def test_send_failures_are_records(response: httpx.Response, kind: str) -> None:
    r = post(lambda req: response)
    assert not r.success and r.error_kind == kind and r.error
    assert kind != "http_503" or r.error == "HTTP 503: overloaded"


def test_send_connection_error_and_timeout() -> None:
    def refuse(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    assert post(refuse).error_kind == "ConnectError"

    async def slow_stream():
        yield sse(delta("a"))
        await asyncio.sleep(1)
        yield sse(delta("b"))

    r = post(lambda req: httpx.Response(200, content=slow_stream()), timeout=0.1)
    assert r.error_kind == "timeout" and r.e2e_s == pytest.approx(0.1, abs=0.08)


def test_closed_loop_keeps_concurrency() -> None:
    in_flight, peak = 0, 0

    async def do(i: int) -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.002)
        in_flight -= 1
        return i

    assert asyncio.run(closed_loop(10, 3, do)) == list(range(10)) and peak == 3
    peak = 0
    rng = np.random.default_rng(0)
    assert (
        asyncio.run(open_loop(10, float("inf"), rng, do, max_concurrency=4)) == list(range(10)) and peak == 4
    )


def test_poisson_arrivals() -> None:
    t = arrival_times(20_000, 50.0, np.random.default_rng(0))
    assert t[0] == 0 and np.all(np.diff(t) >= 0)
    assert 20_000 / t[-1] == pytest.approx(50.0, rel=0.03)
    assert not arrival_times(5, float("inf"), np.random.default_rng(0)).any()

    sent: list[float] = []

    async def do(i: int) -> None:
        sent.append(time.perf_counter())

    asyncio.run(open_loop(5, 100.0, np.random.default_rng(1), do))
    expected = arrival_times(5, 100.0, np.random.default_rng(1))
    assert np.allclose(np.asarray(sent) - sent[0], expected, atol=0.02)
