"""The ``timeline`` field of answers: parsed from streamed and whole answers, aggregated per stage
(p50/p99 over the requests that crossed a stage) and shown in the summary table only when sent."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest

from shared.loadgen.client import RequestRecord, send
from shared.loadgen.metrics import stage_order, summarize
from shared.loadgen.sse import parse_completion, parse_line
from shared.loadgen.table import summary_table

pytestmark = pytest.mark.unit

CLUSTER = {
    "preprocess": 0.01,
    "vision": 0.05,
    "prefill": 0.2,
    "kv_transfer": 0.004,
    "decode": 0.5,
    "gap": 0.03,
}


def timeline(stages: dict[str, float]) -> dict:
    spans = [{"stage": "vision", "service": "encoder", "start": 0.012, "duration": 0.05, "critical": True}]
    return {"e2e": 1.234, "stages": stages, "spans": spans}


def sse(*events: dict | str) -> bytes:
    return b"".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n".encode() for e in events)


def delta(text: str, finish: str | None = None, **extra: object) -> dict:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}], **extra}


def stream(stages: dict[str, float] | None) -> bytes:
    """epd's order: content chunks, the finish chunk (with the timeline), the usage chunk, [DONE]."""
    last = delta("", "length", **({"timeline": timeline(stages)} if stages is not None else {}))
    usage = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}}
    return sse(delta("a"), delta("b"), delta("c"), last, usage, "[DONE]")


def whole(stages: dict[str, float] | None) -> dict:
    body = {
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "abc"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3},
    }
    return body | ({"timeline": timeline(stages)} if stages is not None else {})


def post(response: httpx.Response) -> RequestRecord:
    async def go() -> RequestRecord:
        transport = httpx.MockTransport(lambda req: response)
        async with httpx.AsyncClient(transport=transport) as client:
            return await send(client, "http://x/v1/chat/completions", b"{}", {}, RequestRecord(0), 0.0, 5.0)

    return asyncio.run(go())


def test_parse_timeline_from_chunks_and_whole_answers() -> None:
    line = "data: " + json.dumps(delta("", "stop", timeline=timeline(CLUSTER)))
    assert parse_line(line).stages == CLUSTER
    assert parse_line("data: " + json.dumps(delta("x"))).stages is None
    bad = {"timeline": {"stages": {"vision": "fast", "decode": 0.5, "gap": True, "prefill": float("nan")}}}
    assert parse_line("data: " + json.dumps(bad)).stages == {"decode": 0.5}
    assert parse_line('data: {"timeline": {"e2e": 1}}').stages == {}  # a timeline, no stages
    c = parse_completion(json.dumps(whole(CLUSTER)))
    assert (c.content, c.usage["completion_tokens"], c.stages) == ("abc", 3, CLUSTER)
    assert parse_completion(json.dumps(whole(None)).encode()).stages is None
    assert parse_completion('{"error": {"message": "no"}}').error == "no"
    assert parse_completion("[1]").error.startswith("malformed")


@pytest.mark.parametrize("stages", [CLUSTER, None], ids=["timeline", "none"])
def test_send_records_stages_streamed(stages: dict[str, float] | None) -> None:
    r = post(httpx.Response(200, content=stream(stages), headers={"content-type": "text/event-stream"}))
    assert r.success and (r.completion_tokens, r.content_chunks, len(r.itl_s)) == (3, 3, 2)
    assert r.stages_s == stages


@pytest.mark.parametrize("stages", [CLUSTER, None], ids=["timeline", "none"])
def test_send_records_stages_whole_answer(stages: dict[str, float] | None) -> None:
    r = post(httpx.Response(200, json=whole(stages)))  # Content-Type: application/json
    assert r.success and (r.prompt_tokens, r.completion_tokens, r.content_chunks) == (9, 3, 1)
    assert r.ttft_s is not None and r.ttft_s <= r.e2e_s and r.itl_s == []
    assert r.stages_s == stages
    failed = post(httpx.Response(200, json={"error": {"message": "worker died"}}))
    assert not failed.success and failed.error_kind == "stream_error"


def rec(i: int, stages: dict[str, float] | None, ok: bool = True) -> RequestRecord:
    r = RequestRecord(
        i, ttft_s=0.1, itl_s=[0.01], e2e_s=0.11, completion_tokens=2, success=ok, stages_s=stages
    )
    r.error_kind = None if ok else "http_503"
    return r


def test_stage_percentiles_over_the_requests_that_crossed_the_stage() -> None:
    records = [rec(i, {"gap": 0.001 * (i + 1), "decode": 0.1}) for i in range(100)]  # gap 1..100 ms
    records += [rec(100, {"vision": 0.05, "gap": 0.0505, "future_stage": 0.2})]
    records += [rec(101, None), rec(102, {"vision": 9.0}, ok=False)]  # no timeline; failed: not counted
    s = summarize(records, 1.0, {})
    assert s["timelines"] == 101
    assert list(s["stages_ms"]) == ["vision", "decode", "gap", "future_stage"]
    gap, vision = s["stages_ms"]["gap"], s["stages_ms"]["vision"]
    assert gap["count"] == 101 and gap["p50"] == pytest.approx(50.5) and gap["max"] == pytest.approx(100)
    assert gap["p99"] == pytest.approx(99.0)
    assert (vision["count"], vision["p50"], vision["p99"]) == (1, pytest.approx(50), pytest.approx(50))
    assert s["stages_ms"]["decode"]["count"] == 100
    none = summarize([rec(0, None), rec(1, None)], 1.0, {})
    assert (none["timelines"], none["stages_ms"]) == (0, {})


def test_stage_order_follows_the_timeline() -> None:
    assert stage_order({"gap", "zz", "decode", "preprocess", "aa", "kv_wait"}) == [
        "preprocess", "kv_wait", "decode", "gap", "aa", "zz",
    ]  # fmt: skip


def run_entry(label: str, records: list[RequestRecord]) -> dict:
    return {"label": label, **summarize(records, 1.0, {})}


def test_summary_table_stage_rows_only_with_a_timeline() -> None:
    colocated = {"preprocess": 0.01, "vision": 0.06, "decode": 0.4, "gap": 0.002}
    runs = [
        run_entry("concurrency=1", [rec(0, CLUSTER), rec(1, CLUSTER)]),
        run_entry("concurrency=4", [rec(0, colocated), rec(1, None)]),
    ]
    lines = summary_table({"model": "m", "runs": runs}).splitlines()
    row = {cells[0]: cells[1:] for ln in lines[2:] if (cells := re.split(r"\s{2,}", ln.strip()))}
    assert row["timelines / completed"] == ["2 / 2", "1 / 2"]
    assert row["vision p50/p99 (ms)"] == ["50.0/50.0", "60.0/60.0"]
    assert row["kv_transfer p50/p99 (ms)"] == ["4.0/4.0", "-"]
    stage_rows = [ln.split()[0] for ln in lines[2:] if ln.startswith("  ")]
    assert stage_rows == ["preprocess", "vision", "prefill", "kv_transfer", "decode", "gap"]
    assert lines.index(next(ln for ln in lines if ln.startswith("E2E"))) + 1 == lines.index(
        next(ln for ln in lines if ln.startswith("timelines"))
    )  # right after the latencies
    plain = summary_table({"model": "m", "runs": [run_entry("concurrency=1", [rec(0, None)])]})
    assert "timelines" not in plain and " p50/p99 (ms)" not in plain and "E2E mean/p50/p99" in plain
