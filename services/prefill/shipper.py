"""Prefill's side of KV transfers: reserve at the decode worker, ship KV as it is computed, free on ack.

A prompt is offered to its decode worker as soon as its first chunk is computed (``start``; with
``--no-kv-pipeline`` only once its first token is sampled). Once granted, the KV of every
completed block ships after each engine step, all layers at once, while later chunks compute
(``advance``); the sampled first token (``prefilled``) completes the transfer. The prompt's
blocks stay with it until the decode worker acks. Phases of one transfer::

    RESERVING --grant--> SHIPPING (blocks ship as computed; done after the first token) --> ACKING
        |  \\--queued--> QUEUED --grant--> ...                                      ack --> released
        \\--refused / failed writes / no reply in kv_reply_timeout_s / no grant in grant_timeout_s--> failed

A failed transfer releases the blocks, tells the decode worker to drop it, and reports
``StageError(unavailable, stage=decode)`` to the router: no token from a decode worker reached
the client, so the router may run the request elsewhere, on another decode worker. A request that
finishes at its first token (a stop token, ``max_tokens``) cancels its transfer.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from shared.engine import Engine
from shared.transfer import KVSender, ReplyEvent, TransferReply, reservation
from shared.wire import WireError
from shared.wire.messages import ErrorKind, KVDone, KVGrant, Stage, TraceContext

log = logging.getLogger("prefill")
MIN_BANDWIDTH = 100e6  # bytes/s: an ack may take kv_reply_timeout_s plus the transfer at this rate

Fail = Callable[[str, str, ErrorKind, str, Stage], None]  # (request id, reply_to, kind, message, stage)


class Phase(enum.StrEnum):
    RESERVING = "reserving"  # waiting for an answer to the reservation
    QUEUED = "queued"  # the decode worker has no room yet; waiting for a grant
    SHIPPING = "shipping"  # granted: blocks ship as they are computed, until the first token
    ACKING = "acking"  # everything and done sent; waiting for the ack


WAITING_FOR = {Phase.RESERVING: "an answer to the reservation", Phase.QUEUED: "room", Phase.ACKING: "an ack"}


@dataclass
class Transfer:
    request_id: str
    dest: str
    reply_to: str
    phase: Phase
    reply_by: float  # monotonic: fail unless the decode worker answers by then
    started: float
    num_kv: int  # prompt tokens whose KV moves
    grant: KVGrant | None = None
    shipped: int = 0  # tokens whose KV was handed to the sender
    sampled: list[int] | None = None  # the first token, once prefill sampled it
    nbytes: int = 0


class Shipper:
    def __init__(
        self, engine: Engine, sender: KVSender, fail: Fail, name: str,
        reply_timeout_s: float, grant_timeout_s: float, send_timeout_s: float,
    ) -> None:  # fmt: skip
        self.engine = engine
        self.sender = sender
        self.fail = fail
        self.name = name
        self.reply_timeout_s = reply_timeout_s
        self.grant_timeout_s = grant_timeout_s
        self.send_timeout_s = send_timeout_s
        self.transfers: dict[str, Transfer] = {}
        self.completed = 0
        self.bytes_sent = 0
        self.last_transfer_s = 0.0  # grant to ack, of the latest transfer
        self.on_done: Callable[[Transfer], None] = lambda t: None
        engine.on_preempt = self._preempted

    def __len__(self) -> int:
        return len(self.transfers)

    def start(self, request_id: str, dest: str, reply_to: str, trace: TraceContext | None = None) -> None:
        """Ask ``dest`` for room for the prompt's KV (its first chunk, or all of it, is computed);
        ``trace``: the request's clock now and its trace, handed on to the decode worker."""
        now = time.monotonic()
        state = self.engine.prompt_state(request_id)
        t = Transfer(
            request_id, dest, reply_to, Phase.RESERVING, now + self.reply_timeout_s, now, len(state.token_ids)
        )
        self.transfers[request_id] = t
        sent_at = trace.clock if trace is not None else time.time()
        msg = reservation(
            state, self.engine.pool.num_layers, reply_to, sent_at + self.grant_timeout_s, self.name, trace
        )
        try:
            self.sender.reserve(dest, msg, self.send_timeout_s)
        except WireError as e:
            self._fail(t, f"cannot reach decode worker {dest}: {e}")

    def prefilled(self, request_id: str, sampled: list[int]) -> None:
        """The first token is sampled: the transfer completes once the last blocks are shipped."""
        t = self.transfers[request_id]
        t.sampled = sampled
        if t.phase is Phase.SHIPPING:
            self._ship(t)

    def cancel(self, request_id: str, why: str) -> None:
        """The request needs no decode worker after all (it finished at its first token)."""
        t = self.transfers[request_id]
        self.sender.abort(t.dest, request_id, why)
        self._release(t)

    def handle(self, replies: list[TransferReply]) -> None:
        for r in replies:
            t = self.transfers.get(r.request_id)
            if t is None:
                continue  # a late answer for a transfer already ended
            match r.event, t.phase:
                case ReplyEvent.QUEUED, Phase.RESERVING:
                    t.phase, t.reply_by = Phase.QUEUED, time.monotonic() + self.grant_timeout_s
                case ReplyEvent.GRANTED, Phase.RESERVING | Phase.QUEUED:
                    t.phase, t.grant, t.reply_by, t.started = (
                        Phase.SHIPPING,
                        r.grant,
                        math.inf,
                        time.monotonic(),
                    )
                    self._ship(t)
                case ReplyEvent.ACKED, Phase.ACKING:
                    self._release(t)
                    self.completed += 1
                    self.last_transfer_s = time.monotonic() - t.started
                    self.on_done(t)
                case ReplyEvent.REFUSED, _:
                    message = f"decode worker {t.dest} refused the KV: {r.kind}: {r.message}"
                    self._fail(t, message, notify=False)
                case ReplyEvent.FAILED, _:
                    self._fail(t, r.message, gone=True)

    def advance(self) -> None:
        """After an engine step: ship the blocks it completed, finish what is complete."""
        for t in [t for t in self.transfers.values() if t.phase is Phase.SHIPPING]:
            self._ship(t)

    def _ship(self, t: Transfer) -> None:
        blocks, computed = self.engine.kv_progress(t.request_id)
        b = self.engine.pool.block_size
        ready = computed if t.sampled is not None else computed // b * b  # whole blocks until the end
        assert t.grant is not None
        try:
            if ready > t.shipped:
                t.nbytes += self.sender.send(t.dest, t.grant, blocks, t.shipped, ready, self.send_timeout_s)
                t.shipped = ready
            if t.sampled is not None and t.shipped >= t.num_kv:
                done = KVDone(t.request_id, self.engine.pool.num_layers, t.sampled)
                self.sender.finish(t.dest, done, self.send_timeout_s)
        except WireError as e:
            self._fail(t, f"KV transfer to {t.dest} failed: {e}")
            return
        if t.sampled is not None and t.shipped >= t.num_kv:
            self.bytes_sent += t.nbytes
            t.phase = Phase.ACKING
            t.reply_by = time.monotonic() + self.reply_timeout_s + t.nbytes / MIN_BANDWIDTH

    def _preempted(self, request_id: str) -> None:
        """The engine is about to reuse a prefilling request's blocks: no write may still read them."""
        if request_id in self.transfers and not self.sender.settle(request_id, self.send_timeout_s):
            self._fail(self.transfers[request_id], "writes still reading preempted blocks", gone=True)

    def expire(self) -> None:
        now = time.monotonic()
        for t in [t for t in self.transfers.values() if now > t.reply_by]:
            self._fail(
                t,
                f"decode worker {t.dest} gone? no {WAITING_FOR[t.phase]} in time",
                gone=t.phase is not Phase.QUEUED,
            )

    def abort(self, request_id: str) -> bool:
        t = self.transfers.get(request_id)
        if t is None:
            return False
        self.sender.abort(t.dest, request_id, "aborted by the router")
        self._release(t)
        return True

    def _fail(self, t: Transfer, message: str, notify: bool = True, gone: bool = False) -> None:
        log.warning("[%s] %s", t.request_id, message)
        if notify:
            self.sender.abort(t.dest, t.request_id, message)
        if gone:
            self.sender.forget(t.dest)  # drop what is still queued for a dead peer
        self._release(t)
        self.fail(t.request_id, t.reply_to, ErrorKind.UNAVAILABLE, message, Stage.DECODE)

    def _release(self, t: Transfer) -> None:
        del self.transfers[t.request_id]
        self.sender.settle(t.request_id, self.send_timeout_s)
        self.engine.abort(t.request_id)  # frees the blocks; computed full blocks stay in the prefix cache
