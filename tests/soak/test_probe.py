"""The soak's judgement without a cluster: what counts as at rest, over a cap, or growing."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from bench.soak import SoakConfig, fit, problems
from bench.soak_load import Outcome, Tally
from bench.soak_probe import FDS, NET_RSS, RSS, cap_problems, idle_problems, parse_metrics
from services.prefill.metrics import PrefillMetrics
from shared.loadgen.client import RequestRecord

pytestmark = pytest.mark.unit
MIB = 1 << 20


def test_a_worker_page_gives_gauges_counters_and_process_figures():
    m = PrefillMetrics()
    m.free_blocks.set(7)
    m.requests.inc(3)
    got = parse_metrics(generate_latest(m.registry).decode())
    assert got["prefill_free_blocks"] == 7 and got["prefill_requests_total"] == 3
    assert got[RSS] > 0 and got[FDS] > 0  # ProcessCollector (Linux)
    assert not any(k.endswith("_created") for k in got)


def test_at_rest_means_whole_pools_empty_queues_and_no_new_fds():
    rest = {
        "prefill-0": {
            "prefill_free_blocks": 8.0,
            "prefill_total_blocks": 8.0,
            "prefill_waiting_requests": 0.0,
        },
        "router": {
            "router_queue_depth{stage=decode}": 0.0,
            "debug_worker_inflight{worker=a}": 0.0,
            FDS: 40.0,
        },
    }
    assert idle_problems(rest, fds_before=rest) == []
    busy = {
        "prefill-0": {**rest["prefill-0"], "prefill_free_blocks": 6.0},
        "router": {**rest["router"], "router_queue_depth{stage=decode}": 1.0, FDS: 41.0},
    }
    found = idle_problems(busy, fds_before=rest)
    assert len(found) == 3, found
    assert idle_problems(busy, fds_before=rest, fd_tolerance=1)[-1].startswith("router: router_queue_depth")


def test_a_cache_over_its_cap_is_named():
    s = {"encoder-0": {"encoder_cache_bytes": 10.0, "encoder_cache_max_bytes": 8.0}}
    assert cap_problems(s) == ["encoder-0: encoder_cache_bytes 10 over its cap encoder_cache_max_bytes=8"]
    assert cap_problems({"encoder-0": {"encoder_cache_bytes": 8.0, "encoder_cache_max_bytes": 8.0}}) == []


def _rss_fit(mib_per_min: float, minutes: float) -> dict:
    pts = [[60.0 * i / 4, (500 + mib_per_min * i / 4) * MIB] for i in range(int(minutes * 4) + 1)]
    f = fit(pts, 0.0, minutes * 60)
    assert f is not None and f["slope_per_min"] == pytest.approx(mib_per_min * MIB)
    return {"router": {NET_RSS: f}}


def test_growth_fails_only_when_fast_and_large_and_client_aborts_are_no_errors():
    cfg = SoakConfig(rss_slope_mib_min=2.0, rss_floor_mib=16.0)
    aborted = Outcome("abort", RequestRecord(0, error_kind="client_abort"), abort_after=0, aborted=True)
    tallies = {"soak": Tally([aborted])}
    assert problems(cfg, tallies, _rss_fit(1.0, 25), (0, 1500), [], [], []) == []  # slow
    assert problems(cfg, tallies, _rss_fit(5.0, 2), (0, 120), [], [], []) == []  # short: 10 MiB
    assert "grows 5.00 MiB/min" in problems(cfg, tallies, _rss_fit(5.0, 25), (0, 1500), [], [], [])[0]
    failed = Outcome("json", RequestRecord(1, error_kind="http_500", error="boom"))
    assert problems(cfg, {"soak": Tally([failed])}, {}, (0, 60), [], [], []) == [
        "soak run: 1x http_500: boom"
    ]
