"""Metrics on hand-made records: percentiles, TPOT, ITL, throughput, goodput."""

from __future__ import annotations

import numpy as np
import pytest

from shared.loadgen.client import RequestRecord
from shared.loadgen.metrics import goodput, latency_stats, summarize

pytestmark = pytest.mark.unit


def rec(
    i: int, ttft: float, itl: list[float], tokens: int, prompt: int = 10, ok: bool = True
) -> RequestRecord:
    r = RequestRecord(i, ttft_s=ttft, itl_s=itl, completion_tokens=tokens, prompt_tokens=prompt, success=ok)
    r.e2e_s = ttft + sum(itl)
    if not ok:
        r.error_kind = "http_503"
    return r


def test_latency_stats_percentiles_in_ms() -> None:
    s = latency_stats([0.001 * v for v in range(1, 101)])  # 1..100 ms
    assert s["mean"] == pytest.approx(50.5)
    assert s["median"] == s["p50"] == pytest.approx(50.5)
    assert s["p90"] == pytest.approx(90.1)
    assert s["p99"] == pytest.approx(99.01)
    assert (s["min"], s["max"]) == pytest.approx((1, 100))
    assert s["std"] == pytest.approx(np.std(np.arange(1, 101)))
    assert set(latency_stats([]).values()) == {None}


def test_tpot_excludes_first_token_and_needs_two() -> None:
    r = rec(0, ttft=0.5, itl=[0.1, 0.1, 0.1], tokens=4)
    assert r.tpot_s == pytest.approx(0.1)
    # One chunk carrying two tokens: TPOT still per token (from usage), ITL per chunk.
    r2 = rec(1, ttft=0.5, itl=[0.2], tokens=3)
    assert r2.tpot_s == pytest.approx(0.1)
    assert rec(2, ttft=0.5, itl=[], tokens=1).tpot_s is None
    assert rec(3, ttft=0.5, itl=[0.1], tokens=2, ok=False).tpot_s is None


def test_summarize_counts_only_completed() -> None:
    records = [
        rec(0, 0.1, [0.01, 0.03], 3, prompt=100),
        rec(1, 0.3, [0.02], 2, prompt=50),
        rec(2, 0.2, [0.05], 2, prompt=70, ok=False),
    ]
    s = summarize(records, duration_s=2.0, slo_ms={})
    assert (s["completed"], s["failed"], s["errors"]) == (2, 1, {"http_503": 1})
    assert s["request_throughput"] == pytest.approx(1.0)
    assert s["input_token_throughput"] == pytest.approx(75.0)
    assert s["output_token_throughput"] == pytest.approx(2.5)
    assert s["total_token_throughput"] == pytest.approx(77.5)
    assert s["ttft_ms"]["mean"] == pytest.approx(200.0)
    assert s["itl_ms"]["mean"] == pytest.approx(20.0)  # gaps 10, 30, 20 ms of the completed two
    assert s["tpot_ms"]["median"] == pytest.approx(20.0)  # 20 ms and 20 ms
    assert s["e2e_ms"]["max"] == pytest.approx(320.0)
    assert s["goodput"] is None


def test_goodput_needs_every_slo() -> None:
    records = [
        rec(0, 0.1, [0.01] * 9, 10),  # TTFT 100, TPOT 10, E2E 190
        rec(1, 0.6, [0.01] * 9, 10),  # TTFT too slow
        rec(2, 0.1, [0.1] * 9, 10),  # TPOT too slow
        rec(3, 0.1, [], 1),  # one token: TPOT counts as met
        rec(4, 0.1, [0.01], 2, ok=False),
    ]
    g = goodput(records, 2.0, {"ttft": 500, "tpot": 50})
    assert (g["good_requests"], g["request_goodput"], g["fraction"]) == (2, 1.0, pytest.approx(0.4))
    assert goodput(records, 2.0, {"e2e": 150})["good_requests"] == 1
