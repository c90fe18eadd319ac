"""The orchestrator's bookkeeping, its thread not started: token records from prefill and decode
(two senders) reach the client in the order of their ``index``, and an attempt that finds no
usable worker waits for one (a late report, a replacement) until ``--heartbeat-timeout-s``."""

from __future__ import annotations

import time

import pytest
import zmq

from router.attempts import Live
from router.jobs import Event, Job, VisionTokens
from router.metrics import RouterMetrics
from router.orchestrator import Orchestrator
from router.workers import Decode, Prefill, Workers
from shared.engine import SamplingParams
from shared.wire import PushPool, RouterSocket
from shared.wire.messages import (
    ErrorKind,
    FinishReason,
    LoadReport,
    PrefillRequest,
    SequenceTokens,
    Stage,
    TokenBatch,
)

pytestmark = pytest.mark.unit

TIMEOUT = 0.3


def orchestrator(heartbeat_timeout_s: float = TIMEOUT) -> Orchestrator:
    workers = Workers({}, {}, heartbeat_timeout_s)
    tokens = VisionTokens(9, 10, 2)
    return Orchestrator(
        workers, RouterMetrics(), inbox="tcp://127.0.0.1:0", advertise_host="127.0.0.1", tokens=tokens,
        max_inflight=4, max_per_worker=4, max_retries=2,
    )  # fmt: skip


def job(events: list[Event]) -> Job:
    return Job(
        "rid",
        [1, 2, 3],
        [],
        SamplingParams(temperature=0, max_tokens=6),
        time.monotonic() + 60,
        events.append,
    )


def record(index: int, *ids: int, finish: FinishReason | None = None) -> TokenBatch:
    return TokenBatch("x", [SequenceTokens("rid", list(ids), index=index, finish_reason=finish)])


def test_decode_tokens_that_overtake_the_first_token_wait_for_it() -> None:
    orch, events = orchestrator(), []
    j = job(events)
    assert orch.slots.acquire(blocking=False)
    live = Live(j, "rid", 0, Prefill(zmq="p", inbox="pi"), Decode(kv="d", control="dc"), {})
    live.prefill.inflight = live.decode.inflight = 1
    orch.live["rid"], orch.by_rid["rid"] = live, live
    orch._tokens(record(1, 21))  # decode's first two steps, before prefill's token
    orch._tokens(record(2, 22, 23))
    assert events == [] and live.decoding  # held; and the decode worker has the KV
    orch._tokens(record(0, 20))  # prefill's first token: everything flows
    orch._tokens(record(1, 21))  # a stale duplicate is dropped
    orch._tokens(record(4, 24, 25, finish=FinishReason.LENGTH))
    assert [t for e in events for t, _ in e.tokens] == [20, 21, 22, 23, 24, 25]
    assert events[-1].finish is FinishReason.LENGTH
    assert j.streamed == [20, 21, 22, 23, 24, 25]
    assert "rid" not in orch.live and "rid" not in orch.by_rid
    assert (live.prefill.inflight, live.decode.inflight) == (0, 0)


def test_an_attempt_without_workers_waits_for_one_then_fails_as_overloaded() -> None:
    orch, events = orchestrator(), []
    assert orch.slots.acquire(blocking=False)
    orch._dispatch(job(events), 0, set())
    assert events == [] and "rid" in orch.parked  # waits: nothing usable yet
    orch._check(time.monotonic())
    assert events == [] and "rid" in orch.parked
    time.sleep(TIMEOUT + 0.05)
    orch._check(time.monotonic())
    assert not orch.parked and events[-1].error is ErrorKind.OVERLOADED
    assert "no prefill worker is available" in events[-1].message
    assert orch.slots.acquire(blocking=False)  # its slot came back


def test_a_waiting_attempt_can_be_aborted() -> None:
    orch, events = orchestrator(), []
    assert orch.slots.acquire(blocking=False)
    orch._dispatch(job(events), 0, set())
    orch.abort("rid", "client gone")
    orch._commands()
    assert not orch.parked and events == []
    for _ in range(4):  # every slot is free again
        assert orch.slots.acquire(blocking=False)


def test_a_request_that_breaks_dispatch_fails_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    orch, events = orchestrator(), []

    def broken(*args: object) -> None:
        raise OverflowError("Python int too large to convert to C long")

    monkeypatch.setattr(orch.workers, "pick_prefill", broken)
    orch.submit(job(events))
    orch._commands()  # the loop goes on
    assert events[-1].error is ErrorKind.INTERNAL and not orch.by_rid and not orch.parked
    for _ in range(4):
        assert orch.slots.acquire(blocking=False)


def prefill_requests(server: RouterSocket) -> list[PrefillRequest]:
    """What ``server`` was sent within a moment, heartbeats left out."""
    out = []
    while (got := server.recv(timeout=0.5)) is not None:
        if isinstance(got[1], PrefillRequest):
            out.append(got[1])
    return out


def test_a_prefill_worker_lost_after_the_first_token_is_migrated_from_it() -> None:
    """Prefill streamed the first token, then went silent before the decode worker took the KV
    over: the attempt moves to the other prefill worker with the prompt plus that token (real
    sockets on loopback stand in for the two prefill workers)."""
    orch, events = orchestrator(heartbeat_timeout_s=30.0), []
    orch.prefill_socks, orch.encoder_socks, orch.poller = {}, {}, zmq.Poller()
    orch.controls, orch.reply_to = PushPool(), "tcp://127.0.0.1:9"
    servers = [RouterSocket("tcp://127.0.0.1:0", bind=True) for _ in range(2)]
    try:
        now = time.monotonic()
        for s in servers:
            orch._joined(LoadReport("p", Stage.PREFILL, s.endpoint, "tcp://127.0.0.1:8"))
        orch.workers.heard(LoadReport("d", Stage.DECODE, "tcp://127.0.0.1:7", "tcp://127.0.0.1:6"), now)
        assert orch.slots.acquire(blocking=False)
        orch._dispatch(job(events), 0, set())
        got = {s: prefill_requests(s) for s in servers}
        lost = next(s for s in servers if got[s])
        (sent,) = got[lost]
        orch._tokens(record(0, 77))  # prefill's first token reached the client
        orch.workers.prefills[lost.endpoint].heard = now - 60.0  # then it went silent
        orch._check(time.monotonic())
        other = next(s for s in servers if s is not lost)
        (moved,) = prefill_requests(other)
        assert moved.request_id == "rid.r1"
        assert moved.prompt_token_ids == [*sent.prompt_token_ids, 77]
        assert (moved.sampling.max_tokens, moved.sampling.draw_offset) == (5, 1)
        assert [t for e in events for t, _ in e.tokens] == [77] and not any(e.error for e in events)
        assert orch.metrics.migrations._value.get() == 1
    finally:
        for s in servers:
            s.close()
        for sock in orch.prefill_socks.values():
            sock.close()
        orch.controls.close()


def test_a_retry_whose_dispatch_raises_fails_the_request_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The failed attempt is ended once, the request gets one error, its slot comes back once."""
    orch, events = orchestrator(heartbeat_timeout_s=30.0), []
    orch.prefill_socks, orch.encoder_socks, orch.poller = {}, {}, zmq.Poller()
    orch.controls, orch.reply_to = PushPool(), "tcp://127.0.0.1:9"
    server = RouterSocket("tcp://127.0.0.1:0", bind=True)
    try:
        orch._joined(LoadReport("p", Stage.PREFILL, server.endpoint, "tcp://127.0.0.1:8"))
        orch.workers.heard(
            LoadReport("d", Stage.DECODE, "tcp://127.0.0.1:7", "tcp://127.0.0.1:6"), time.monotonic()
        )
        assert orch.slots.acquire(blocking=False)
        orch._dispatch(job(events), 0, set())
        (live,) = orch.live.values()

        def broken(*args: object) -> None:
            raise RuntimeError("a bug")

        monkeypatch.setattr(orch.workers, "pick_prefill", broken)
        orch._failed(live, ErrorKind.UNAVAILABLE, "gone", Stage.DECODE)
        assert [e.error for e in events] == [ErrorKind.INTERNAL]
        assert (live.prefill.inflight, live.decode.inflight) == (0, 0)
        assert not orch.live and not orch.by_rid and not orch.parked
        for _ in range(4):
            assert orch.slots.acquire(blocking=False)
        assert not orch.slots.acquire(blocking=False)
    finally:
        server.close()
        for sock in orch.prefill_socks.values():
            sock.close()
        orch.controls.close()
