"""Prefill's side of KV transfers: reserve at the decode worker, ship layers, free on ack.

A prompt whose first token was sampled (finish reason ``prefilled``) holds its blocks until its
transfer ends. Phases of one transfer::

    RESERVING --grant--> (layers + done sent) ACKING --ack--> released (blocks freed or cached)
        |  \\--queued--> QUEUED --grant--> ...
        \\--refused / no reply in kv_reply_timeout_s / no grant in grant_timeout_s--> failed

A failed transfer releases the blocks, tells the decode worker to drop it, and reports
``StageError(unavailable, stage=decode)`` to the router: no token from a decode worker reached
the client, so the router may run the request elsewhere, on another decode worker.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from shared.engine import Engine
from shared.transfer import KVSender, ReplyEvent, TransferReply, reservation
from shared.wire import WireError
from shared.wire.messages import ErrorKind, Stage

log = logging.getLogger("prefill")
MIN_BANDWIDTH = 100e6  # bytes/s: an ack may take kv_reply_timeout_s plus the transfer at this rate

Fail = Callable[[str, str, ErrorKind, str, Stage], None]  # (request id, reply_to, kind, message, stage)


class Phase(enum.StrEnum):
    RESERVING = "reserving"  # waiting for an answer to the reservation
    QUEUED = "queued"  # the decode worker has no room yet; waiting for a grant
    ACKING = "acking"  # layers and done sent; waiting for the ack


WAITING_FOR = {Phase.RESERVING: "an answer to the reservation", Phase.QUEUED: "room", Phase.ACKING: "an ack"}


@dataclass
class Transfer:
    request_id: str
    dest: str
    reply_to: str
    phase: Phase
    reply_by: float  # monotonic: fail unless the decode worker answers by then
    started: float
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
        self.last_transfer_s = 0.0  # first byte queued to ack, of the latest transfer
        self.on_done: Callable[[Transfer], None] = lambda t: None

    def __len__(self) -> int:
        return len(self.transfers)

    def start(self, request_id: str, dest: str, reply_to: str) -> None:
        """The prompt is computed: ask ``dest`` for room."""
        now = time.monotonic()
        t = Transfer(request_id, dest, reply_to, Phase.RESERVING, now + self.reply_timeout_s, now)
        self.transfers[request_id] = t
        state = self.engine.export_state(request_id)
        msg = reservation(
            state, self.engine.pool.num_layers, reply_to, time.time() + self.grant_timeout_s, self.name
        )
        try:
            self.sender.reserve(dest, msg, self.send_timeout_s)
        except WireError as e:
            self._fail(t, f"cannot reach decode worker {dest}: {e}")

    def handle(self, replies: list[TransferReply]) -> None:
        for r in replies:
            t = self.transfers.get(r.request_id)
            if t is None:
                continue  # a late answer for a transfer already ended
            match r.event, t.phase:
                case ReplyEvent.QUEUED, Phase.RESERVING:
                    t.phase, t.reply_by = Phase.QUEUED, time.monotonic() + self.grant_timeout_s
                case ReplyEvent.GRANTED, Phase.RESERVING | Phase.QUEUED:
                    self._ship(t)
                case ReplyEvent.ACKED, Phase.ACKING:
                    self._release(t)
                    self.completed += 1
                    self.last_transfer_s = time.monotonic() - t.started
                    self.on_done(t)
                case ReplyEvent.REFUSED, _:
                    message = f"decode worker {t.dest} refused the KV: {r.kind}: {r.message}"
                    self._fail(t, message, notify=False)

    def _ship(self, t: Transfer) -> None:
        t.started = time.monotonic()
        try:
            for layer in range(self.engine.pool.num_layers):
                k, v = self.engine.export_kv_layer(t.request_id, layer)
                t.nbytes += self.sender.send_layer(t.dest, t.request_id, layer, k, v, self.send_timeout_s)
            self.sender.finish(t.dest, t.request_id, self.engine.pool.num_layers, self.send_timeout_s)
        except WireError as e:
            self._fail(t, f"KV transfer to {t.dest} failed: {e}")
            return
        self.bytes_sent += t.nbytes
        t.phase = Phase.ACKING
        t.reply_by = time.monotonic() + self.reply_timeout_s + t.nbytes / MIN_BANDWIDTH

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
            self.sender.forget(t.dest)  # drop layers still queued for a dead peer
        self._release(t)
        self.fail(t.request_id, t.reply_to, ErrorKind.UNAVAILABLE, message, Stage.DECODE)

    def _release(self, t: Transfer) -> None:
        del self.transfers[t.request_id]
        self.engine.abort(t.request_id)  # frees the blocks; computed full blocks stay in the prefix cache
