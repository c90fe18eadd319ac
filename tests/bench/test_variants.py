"""``bench.variants``: the round orders rotate so that every variant runs in every position, and the
figures and medians come out of a load report and the decode workers' counters as printed."""

from __future__ import annotations

import pytest

from bench.variants import figures, medians, rotation

pytestmark = pytest.mark.unit


def test_every_variant_takes_every_position_over_n_rounds() -> None:
    orders = [rotation(3, r) for r in range(3)]
    assert orders == [[0, 1, 2], [1, 2, 0], [2, 0, 1]]
    for position in range(3):
        assert sorted(order[position] for order in orders) == [0, 1, 2]
    assert rotation(3, 4) == [1, 2, 0] and rotation(1, 5) == [0]


def test_figures_and_medians() -> None:
    report = {"runs": [{"request_throughput": 41.234, "ttft_ms": {"p50": 80.04}, "tpot_ms": {"p50": 3.456}}]}
    steps = {"decode-0": {"tokens_per_step": 4.0}, "decode-1": {"tokens_per_step": 5.0}}
    got = figures(report, steps, {"router": 5.0, "decode-0": 10.25})
    assert got == {"req/s": 41.23, "TTFT p50": 80.0, "TPOT p50": 3.46, "tokens/step": 4.5, "CPU ms/req": 15.2}
    assert figures(report, {}, {})["tokens/step"] is None  # no decode worker counted (colocated)
    rows = [got, {**got, "req/s": 39.0, "tokens/step": None}, {**got, "req/s": 50.0, "tokens/step": 3.0}]
    med = medians(rows)
    assert med["req/s"] == 41.23 and med["tokens/step"] == 3.75 and med["TTFT p50"] == 80.0
