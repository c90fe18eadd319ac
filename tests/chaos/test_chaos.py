"""A CI-sized ``bench.chaos``: under a closed loop of streamed greedy requests, a decode worker is
SIGKILLed with a stream under way and a prefill worker with prompts not yet answered, each then
replaced; every request must succeed with its undisturbed text, within the undisturbed p99 + 5 s,
and every KV pool must come back to all blocks free."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import Chaos, Event, run, summary

pytestmark = pytest.mark.cluster


def test_killed_decode_and_prefill_workers_lose_no_request(tmp_path: Path) -> None:
    ch = Chaos(distinct=8, concurrency=4, log_dir=tmp_path)
    out = run(ch, [Event("decode", "kill", 1.0), Event("prefill", "kill", 1.0)])
    print(summary(out, ch))
    assert all(r.held for r in out.reports), "an event hit a worker that held nothing: it proves nothing"
    assert [name for name, ok in out.checks if not ok] == [], summary(out, ch)
