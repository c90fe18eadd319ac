"""Decode's side of KV transfers: the reservation handshake and the import, chunk by chunk.

A reservation is granted only when the engine can hold the sequence's KV now
(``Engine.begin_import`` reserves its blocks, and the grant names them); otherwise it waits in a
bounded FIFO (the prefill worker is told ``queued`` and keeps its copy) until blocks free up or
its deadline passes, and beyond that bound it is refused as ``overloaded``. A guided request also
waits there while its guide's automaton compiles in the background (the ones behind it may go
first), and is refused if it cannot compile. Data is therefore
never sent without room and never dropped. A state the engine cannot turn into a sequence is
refused (``bad_request``) at once, and the other messages of the same batch are handled as
usual (a prompt or sampled token outside the vocabulary too: it would fail every step that runs
it). The KV then arrives while prefill still computes: as ``KVLayer`` pieces copied into the
blocks (zmq), or written into them by the sender with ``KVProgress`` after each landed batch
(mooncake; nothing is copied here). ``KVDone`` brings the first token and ends the import. A
granted transfer must show progress every ``transfer_timeout_s``: otherwise the prefill worker is
taken as gone, the blocks are freed and the router is told.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.engine import Engine
from shared.timeline import RequestClock
from shared.transfer import KVReceiver, state_from_reservation
from shared.transfer.base import KVInbound
from shared.wire.messages import ErrorKind, KVAbort, KVDone, KVLayer, KVProgress, KVReserve

log = logging.getLogger("decode")
# What building a sequence from a handed-over state may raise: the engine refuses it (ValueError)
# or the state cannot be used at all (wrong types, a value torch does not accept).
UNUSABLE_STATE = (ValueError, TypeError, KeyError, RuntimeError)

Fail = Callable[[str, str, ErrorKind, str], None]  # (request id, reply_to, kind, message)


MAX_ABORTED = 4096
ABORTED_TTL_S = 60.0


class Admission(enum.StrEnum):
    """What ``begin_import`` made of a reservation."""

    GRANTED = "granted"  # the blocks are reserved; prefill is told to send
    FULL = "full"  # no room now; the reservation may wait
    COMPILING = "compiling"  # its guide's automaton is not compiled yet; it waits, the next may go
    REFUSED = "refused"  # never acceptable; prefill is told why


@dataclass
class Import:
    msg: KVReserve
    expires: float  # monotonic; pushed back by every message of the transfer
    clock: RequestClock  # the request's, pinned when the reservation arrived
    granted: float  # monotonic
    nbytes: int = 0  # KV bytes stored (copied or written by the sender)
    copied: int = 0  # of which copied here out of received frames
    layers: set[int] = field(default_factory=set)  # layers that arrived as KVLayer


class Importer:
    def __init__(
        self, engine: Engine, receiver: KVReceiver, fail: Fail, max_pending: int, transfer_timeout_s: float
    ) -> None:
        self.engine = engine
        self.receiver = receiver
        self.fail = fail
        self.max_pending = max_pending
        self.transfer_timeout_s = transfer_timeout_s
        self.pending: OrderedDict[str, KVReserve] = OrderedDict()  # waiting for room, FIFO
        self.clocks: dict[str, RequestClock] = {}  # the pending ones' (the request's clock)
        self.importing: dict[str, Import] = {}
        self.refused: dict[str, int] = {}
        # aborted before their reservation came (the router's abort overtook prefill's transfer):
        # refused when it comes, not run to max_tokens for nobody; request id -> monotonic time
        self.aborted: OrderedDict[str, float] = OrderedDict()
        self.bytes_received = 0
        self.bytes_copied = 0  # received frames copied into the pool (stays 0 under one-sided writes)
        self.num_queued = 0  # reservations that had to wait for room, since start
        self.on_imported: Callable[[KVReserve, Import], None] = lambda msg, imp: None

    def known(self, request_id: str) -> bool:
        return request_id in self.pending or request_id in self.importing or request_id in self.engine.seqs

    def handle(self, messages: list[KVInbound]) -> None:
        for msg in messages:
            if isinstance(msg, KVReserve):
                self._reserve(msg)
            elif isinstance(msg, KVLayer):
                self._layer(msg)
            elif isinstance(msg, KVProgress):
                self._progress(msg)
            elif isinstance(msg, KVDone):
                self._done(msg)
            elif isinstance(msg, KVAbort):
                self.drop(msg.request_id, f"prefill aborted the transfer: {msg.reason}")

    def forget_later(self, request_id: str) -> None:
        """The router aborted a request this worker does not hold (yet): refuse its transfer if it
        comes within ``ABORTED_TTL_S``."""
        now = time.monotonic()
        self.aborted[request_id] = now
        self.aborted.move_to_end(request_id)
        while self.aborted and (
            len(self.aborted) > MAX_ABORTED or next(iter(self.aborted.values())) < now - ABORTED_TTL_S
        ):
            self.aborted.popitem(last=False)

    def _reserve(self, msg: KVReserve) -> None:
        rid = msg.request_id
        if self.aborted.pop(rid, None) is not None:
            self._refuse(rid, ErrorKind.BAD_REQUEST, "the router aborted this request")
            return
        if self.known(rid):
            self._refuse(rid, ErrorKind.BAD_REQUEST, "request id already in use here")
            return
        if (bad := self._outside_vocab(msg.token_ids)) is not None:
            self._refuse(rid, ErrorKind.BAD_REQUEST, bad)
            return
        clock = RequestClock.received(msg.trace)
        if not self.pending and self._try_begin(msg, clock) in (Admission.GRANTED, Admission.REFUSED):
            return
        if len(self.pending) >= self.max_pending:
            self._refuse(rid, ErrorKind.OVERLOADED, f"no room and {len(self.pending)} reservations waiting")
            return
        self.pending[rid], self.clocks[rid] = msg, clock
        self.num_queued += 1
        self.receiver.queued(rid, len(self.pending) - 1)

    def _try_begin(self, msg: KVReserve, clock: RequestClock) -> Admission:
        try:
            if not self.engine.guide_ready(msg.sampling.guide):
                return Admission.COMPILING
            blocks = self.engine.begin_import(state_from_reservation(msg))
        except UNUSABLE_STATE as e:
            why = f"unusable sequence state: {type(e).__name__}: {e}"
            self._refuse(msg.request_id, ErrorKind.BAD_REQUEST, why)
            return Admission.REFUSED
        if blocks is None:
            return Admission.FULL
        now = time.monotonic()
        self.importing[msg.request_id] = Import(msg, now + self.transfer_timeout_s, clock, now)
        self.receiver.grant(msg.request_id, blocks)
        return Admission.GRANTED

    def grant_waiting(self) -> None:
        """Grant queued reservations in arrival order while room lasts; refuse the expired ones."""
        for rid, msg in list(self.pending.items()):
            if self.clocks[rid].now() > msg.deadline:
                del self.pending[rid], self.clocks[rid]
                self._refuse(rid, ErrorKind.OVERLOADED, "no room before the reservation's deadline")
        for rid, msg in list(self.pending.items()):  # in order; a compiling one lets the next go
            admission = self._try_begin(msg, self.clocks[rid])
            if admission is Admission.FULL:
                return
            if admission is not Admission.COMPILING:
                del self.pending[rid], self.clocks[rid]

    def _layer(self, msg: KVLayer) -> None:
        imp = self.importing.get(msg.request_id)
        if imp is None:
            return  # dropped meanwhile (abort, timeout)
        try:
            self.engine.import_kv_layer(msg.request_id, msg.layer, msg.keys, msg.values, msg.start)
        except UNUSABLE_STATE as e:  # torch may refuse a tensor the checks let through
            self._fail_import(imp, ErrorKind.BAD_REQUEST, f"bad KV layer {msg.layer}: {e}")
            return
        imp.layers.add(msg.layer)
        n = msg.keys.nbytes + msg.values.nbytes
        imp.nbytes += n
        imp.copied += n
        imp.expires = time.monotonic() + self.transfer_timeout_s

    def _progress(self, msg: KVProgress) -> None:
        imp = self.importing.get(msg.request_id)
        if imp is not None:
            imp.expires = time.monotonic() + self.transfer_timeout_s

    def _done(self, msg: KVDone) -> None:
        imp = self.importing.get(msg.request_id)
        if imp is None:
            return
        if (bad := self._outside_vocab(msg.sampled)) is not None:
            self._fail_import(imp, ErrorKind.BAD_REQUEST, bad)
            return
        # Written by the sender when nothing arrived as frames and this receiver takes writes.
        written = self.receiver.one_sided and not imp.layers
        try:
            self.engine.finish_import(msg.request_id, list(msg.sampled), written=written)
        except ValueError as e:
            self._fail_import(imp, ErrorKind.BAD_REQUEST, str(e))
            return
        if written:
            imp.nbytes = self.engine.kv_bytes(len(imp.msg.token_ids))
        del self.importing[msg.request_id]
        self.bytes_received += imp.nbytes
        self.bytes_copied += imp.copied
        self.receiver.ack(msg.request_id)
        self.on_imported(imp.msg, imp)

    def _outside_vocab(self, token_ids: list[int]) -> str | None:
        vocab = self.engine.model_config.text.vocab_size
        top = max(token_ids, default=0)
        return f"token {top} is outside the vocabulary of {vocab}" if top >= vocab else None

    def expire(self) -> None:
        now = time.monotonic()
        for imp in [i for i in self.importing.values() if now > i.expires]:
            self._fail_import(
                imp, ErrorKind.UNAVAILABLE, "prefill worker gone? the KV transfer did not finish"
            )

    def drop(self, request_id: str, why: str) -> bool:
        """End a pending or importing transfer without telling prefill (it asked, or is gone)."""
        found = self.pending.pop(request_id, None) is not None
        self.clocks.pop(request_id, None)
        if self.importing.pop(request_id, None) is not None:
            self.engine.abort(request_id)
            found = True
        if found:
            log.info("[%s] transfer dropped: %s", request_id, why)
            self.receiver.forget(request_id)
        return found

    def _fail_import(self, imp: Import, kind: ErrorKind, message: str) -> None:
        rid = imp.msg.request_id
        self.receiver.refuse(rid, kind, message)
        self.drop(rid, message)
        self.fail(rid, imp.msg.reply_to, kind, message)

    def _refuse(self, request_id: str, kind: ErrorKind, message: str) -> None:
        log.info("[%s] reservation refused: %s", request_id, message)
        self.refused[kind.value] = self.refused.get(kind.value, 0) + 1
        self.receiver.refuse(request_id, kind, message)
