"""The elastic-cluster scenario (``bench.elastic``) at a size for the suite: two routers, workers
that register themselves, a second encoder and decode worker joining under load, the first ones
drained and the first router stopped mid-stream, and not one request lost.

Budget: about 60 s on 2 cores (7 processes on the demo model; decode graphs not compiled, which
the scenario does not exercise). ``python -m bench.elastic`` runs it with 240 requests."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.elastic import ROUTERS, Scenario, report, run

pytestmark = pytest.mark.cluster


def test_workers_join_and_drain_and_a_router_stops_under_load(tmp_path: Path) -> None:
    out = run(
        Scenario(num_requests=48, concurrency=4, decode_flags=("--no-compile-decode",), log_dir=tmp_path)
    )
    print(report(out))
    assert out.problems() == [], report(out)
    assert len(out.records) >= 48 and not out.failed
    assert set(out.by_router) == set(ROUTERS)
    # each new worker registered with both routers, then served (counted by the worker itself)
    assert set(out.join_delay_s) == {"encoder-1", "decode-1"}
    assert all(0 < d < 30 for d in out.join_delay_s.values())
    assert out.served["encoder-1"] > 0 and out.served["decode-1"] > 0
    # the drained workers finished what they held and exited 0; the router finished its streams
    assert out.exits == {"decode-0": 0, "encoder-0": 0, ROUTERS[0]: 0}
    assert out.drained_clean == {"decode-0": True, "encoder-0": True}
    assert out.router_streams_at_sigterm > 0
