"""The critical path through a request's stamps, the report the response carries, and the clock
that places a worker's stamps on the request's clock."""

from __future__ import annotations

import time

import pytest

from shared.timeline import RequestClock, StageName, Timeline, critical_path
from shared.wire.messages import StageStamp, TraceContext

pytestmark = pytest.mark.unit

T0 = 1_700_000_000.0


def stamp(stage: str, start: float, duration: float) -> StageStamp:
    return StageStamp(stage, T0 + start, duration)


# one image, KV hand-off pipelined with prefill (kv_transfer runs alongside it)
STAMPS = [
    stamp("preprocess", 0.000, 0.010), stamp("admission", 0.010, 0.001),
    stamp("encode_queue", 0.012, 0.002), stamp("vision", 0.014, 0.050),
    stamp("embedding_wait", 0.012, 0.055),  # waiting: overlaps the encoder
    stamp("prefill_queue", 0.068, 0.001), stamp("prefill", 0.069, 0.100),
    stamp("kv_wait", 0.070, 0.001), stamp("kv_transfer", 0.071, 0.100),
    stamp("decode_queue", 0.171, 0.001), stamp("decode", 0.172, 0.500),
]  # fmt: skip


def test_the_path_goes_through_what_was_waited_for_and_names_the_gaps() -> None:
    path = critical_path(STAMPS, T0, T0 + 0.7)
    got = [(s.stage, round(s.start - T0, 3), round(s.end - T0, 3)) for s in path]
    assert got == [
        ("preprocess", 0.0, 0.01), ("admission", 0.01, 0.011), ("gap", 0.011, 0.012),
        ("encode_queue", 0.012, 0.014), ("vision", 0.014, 0.064), ("gap", 0.064, 0.068),
        ("prefill_queue", 0.068, 0.069),
        ("prefill", 0.069, 0.169),  # kv_wait ended inside it: still one segment
        ("kv_transfer", 0.169, 0.171),  # only the hand-off's tail after prefill is on the path
        ("decode_queue", 0.171, 0.172), ("decode", 0.172, 0.672), ("gap", 0.672, 0.7),
    ]  # fmt: skip
    assert sum(s.duration for s in path) == pytest.approx(0.7)
    assert all(a.end <= b.start + 1e-9 for a, b in zip(path, path[1:], strict=False))
    assert {s.service for s in path if s.stage == "vision"} == {"encoder"}


def test_no_stamps_is_one_gap_and_stamps_outside_are_cut() -> None:
    assert [(s.stage, s.duration) for s in critical_path([], T0, T0 + 1)] == [("gap", 1.0)]
    path = critical_path([stamp("decode", -1.0, 3.0)], T0, T0 + 1)  # began before, ends after
    assert [(s.stage, s.start, s.end) for s in path] == [("decode", T0, T0 + 1)]


def test_the_report_sums_stages_and_marks_the_critical_ones() -> None:
    t = Timeline(T0, stamps=list(STAMPS))
    t.finish(T0 + 0.7)
    report = t.report()
    assert report["e2e"] == pytest.approx(0.7)
    assert report["stages"]["gap"] == pytest.approx(0.001 + 0.004 + 0.028)
    assert report["stages"]["vision"] == pytest.approx(0.05)
    critical = {s["stage"] for s in report["spans"] if s["critical"]}
    assert "embedding_wait" not in critical and "kv_wait" not in critical and "prefill" in critical
    assert [s["start"] for s in report["spans"]] == sorted(s["start"] for s in report["spans"])
    colocated = Timeline(T0, colocated=True, stamps=[stamp("vision", 0, 0.1)])
    colocated.finish(T0 + 0.1)
    assert colocated.report()["spans"][0]["service"] == "colocated"


def test_a_workers_stamps_are_on_the_senders_clock_whatever_its_own_wall_clock() -> None:
    sent = T0 + 12.5  # the request's clock when the message left (another machine's reading)
    clock = RequestClock.received(TraceContext("", sent))
    begin = time.monotonic()
    time.sleep(0.02)
    s = clock.stamp(StageName.PREFILL, begin)
    assert s.start == pytest.approx(sent, abs=0.01) and 0.02 <= s.duration < 0.5
    assert clock.trace("").clock >= s.start + s.duration - 1e-6
    # a deadline on the request's clock, as this machine's time.time() reads it
    assert clock.local_deadline(sent + 30) == pytest.approx(time.time() + 30, abs=0.05)
