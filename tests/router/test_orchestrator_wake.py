"""The orchestrator's thread sleeps between its timed checks and wakes for a command at once.

It polls its sockets together with a pipe that every queued command writes to; before, it polled
every 2 ms to look at the command queue (an idle router spent ~30 ms of CPU a second on that).
With the timed checks made a minute apart, anything answered here was answered by the wake-up.
"""

from __future__ import annotations

import time

import pytest

from router import orchestrator as orchestrator_module
from router.jobs import VisionTokens
from router.metrics import RouterMetrics
from router.orchestrator import Orchestrator
from router.workers import Workers

pytestmark = pytest.mark.unit


def test_commands_wake_the_thread_and_stop_is_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(orchestrator_module, "CHECK_S", 60.0)
    monkeypatch.setattr(orchestrator_module, "HEARTBEAT_S", 60.0)
    orch = Orchestrator(
        Workers({}, {}, 15.0), RouterMetrics(), inbox="tcp://127.0.0.1:0", advertise_host="127.0.0.1",
        tokens=VisionTokens(9, 10, 2), max_inflight=200, max_per_worker=4, max_retries=2,
    )  # fmt: skip
    orch.start()
    try:
        time.sleep(0.2)  # the thread is in its poll, its next timed check a minute away
        for _ in range(3):
            snapshot = orch.snapshot().result(timeout=10)  # waits for the thread's answer
            assert snapshot is not None
        burst = [orch.snapshot() for _ in range(300)]  # more than one turn reads (256)
        assert all(f.result(timeout=10) is not None for f in burst)
    finally:
        started = time.monotonic()
        orch.stop()
        assert time.monotonic() - started < 5  # woken by stop, not by the join's timeout
    assert not orch.thread.is_alive()
    assert orch._waker == orch._woken == -1  # the pipe is closed
    orch._wake()  # a late command after stop touches no descriptor
