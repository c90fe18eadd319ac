"""The prefill worker: prompts and image embeddings in, first token to the router, KV to decode.

What it owns: the language model and ``lm_head`` (no vision weights), an engine whose requests
are all ``prefill_only``, the requests waiting for their embeddings (``waiting.py``), and the KV
transfers of computed prompts (``shipper.py``).

Sockets:
* ``ROUTER`` at ``--host:--port``: routers (DEALER) send ``PrefillRequest``, ``AbortRequest`` and
  ``RouterHeartbeat``; a malformed message (or a prompt with a token outside the vocabulary) is
  answered with ``StageError(bad_request)`` on it, a request from a peer that already has
  ``--max-inflight-per-peer`` requests here with ``StageError(overloaded)`` (``shared.wire.inflight``).
* ``PULL`` at ``--inbox-port``: encoders push ``ImageEmbeddingResult`` (or ``StageError``); a
  malformed one that names a waiting request fails that request (``bad_request``), else it is
  counted and logged. Connections ZMQ drops for an oversized frame are counted on both sockets.
* a ``KVSender`` (``shared.transfer``, ``--kv-transfer``): one DEALER per decode worker, replies
  on the same; with mooncake, the KV itself goes as one-sided writes into the decode pool.
* ``PUSH`` to each request's ``reply_to`` (``PushPool``): ``TokenBatch`` with the first token,
  or ``StageError``.
* HTTP on ``--http-port``: /health, /ready, /metrics.
* ``LoadReport`` to every router of ``--report-to`` (``services.common.membership``: registration,
  heartbeat, drain); a router gone silent: its requests are dropped here.

Life cycle of a request, one stage per step of the loop:
1. receive: requests, embeddings and transfer replies, in any order. A request waits until all
   its embeddings are there; an image error or its deadline fails it (what arrived is freed).
2. admit: a complete request becomes an engine ``Request(prefill_only=True)``.
3. run: one engine step (chunked prefill, prefix cache, deepstack).
4. send: a sampled first token goes to the router at once. KV hand-off, layer-pipelined: once a
   request's first chunk is computed its prompt is offered to the decode worker (reserve); once
   granted, the KV of each step's completed blocks ships (every layer) while the next chunk
   computes; the first token completes the transfer; on the ack the blocks are freed (full
   blocks stay in the prefix cache). Refusals, failed writes and silent decode workers end the
   request with an error.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from services.common.http import Health
from services.common.loop import IDLE_POLL_S, MAX_RECV_PER_STEP, serve_steps
from services.common.membership import Load, Membership
from services.common.tokens import token_batch
from services.prefill.config import PrefillConfig
from services.prefill.metrics import PrefillMetrics
from services.prefill.requests import build_request
from services.prefill.shipper import Shipper, Transfer
from services.prefill.waiting import Waiting, WaitingRoom
from shared.engine import Engine, FinishReason, TokenOutput
from shared.timeline import RequestClock, Service, StageName, Tracer, observe
from shared.transfer import KVSender
from shared.wire import (
    ImageEmbeddingResult,
    PullSocket,
    PushPool,
    RouterSocket,
    StageError,
    WireError,
    monitor,
    rejects,
)
from shared.wire.inflight import PeerLimit
from shared.wire.messages import (
    AbortRequest,
    ErrorKind,
    PrefillRequest,
    RouterHeartbeat,
    Stage,
    StageStamp,
    TokenBatch,
)
from shared.wire.poll import wait_readable

log = logging.getLogger("prefill")


@dataclass
class Active:
    """A request in the engine, and its timeline so far (monotonic times; ``clock`` places them)."""

    msg: PrefillRequest
    clock: RequestClock
    admitted: float
    encoders: list[StageStamp]  # the encoders' stamps of its images, sent on with the first token
    waited: list[StageStamp]  # its embedding wait (none for a prompt without images)
    started: float | None = None  # its first chunk's step began

    @property
    def traceparent(self) -> str:
        return self.msg.trace.traceparent if self.msg.trace else ""


class PrefillServer:
    def __init__(
        self, cfg: PrefillConfig, engine: Engine, sender: KVSender, metrics: PrefillMetrics, health: Health
    ) -> None:
        self.cfg, self.engine, self.metrics, self.health = cfg, engine, metrics, health
        self.requests = RouterSocket(
            cfg.address(cfg.port), bind=True, accept=[PrefillRequest, AbortRequest, RouterHeartbeat]
        )
        self.inbox = PullSocket(
            cfg.address(cfg.inbox_port), bind=True, accept=[ImageEmbeddingResult, StageError],
            max_frame_bytes=1 << 31,
        )  # fmt: skip
        self.outbox = PushPool()
        self.endpoint = self.requests.endpoint
        self.inbox_endpoint = self.inbox.endpoint
        self.name = cfg.name or f"prefill@{self.endpoint}"
        self.waiting = WaitingRoom(cfg.max_waiting, cfg.max_orphan_bytes, cfg.orphan_ttl_s)
        self.shipper = Shipper(
            engine,
            sender,
            self._transfer_failed,
            self.name,
            cfg.kv_reply_timeout_s,
            cfg.grant_timeout_s,
            cfg.send_timeout_s,
        )
        self.shipper.on_done = self._transferred
        self.sender = sender
        self.active: dict[str, Active] = {}  # in the engine
        # requests in flight by router: until their KV is handed over (swept by what is still held)
        self.inflight = PeerLimit(cfg.max_inflight_per_peer, held=self._holds)
        self._unlisten = monitor.count_drops(metrics.oversized_drops, metrics.protocol_drops)
        self.tracer = Tracer(Service.PREFILL, cfg.otlp_traces_endpoint, self.name)
        self.membership = Membership(
            cfg, Stage.PREFILL, self.name, cfg.advertised(self.endpoint), cfg.advertised(self.inbox_endpoint),
            health.url(cfg.reachable_host),
        )  # fmt: skip
        metrics.total_blocks.set(engine.blocks.num_blocks)
        metrics.orphan_max_bytes.set(cfg.max_orphan_bytes)

    # ----- the loop ------------------------------------------------------------------------------
    def serve(self, stop: threading.Event) -> None:
        self.health.ready = True
        log.info(
            "%s serving (inbox %s, %d KV blocks)",
            self.name,
            self.inbox_endpoint,
            self.engine.blocks.num_blocks,
        )
        serve_steps(self.step, stop, self.metrics.errors, log)

    def step(self) -> None:
        self.health.tick()
        self.receive(0.0 if self.engine.has_unfinished() else IDLE_POLL_S)
        for router in self.membership.gone_routers():  # after receive: a stall here is no router's silence
            self._router_gone(router)
        self.admit()
        started = time.monotonic()
        try:
            outputs = self.engine.step() if self.engine.has_unfinished() else []
        except Exception as e:  # a bug must fail the requests it met, not every later step
            self._step_failed(e)
            outputs = []
        self.mark_started(started)
        self.send(outputs)
        self.reserve_early()
        self.shipper.advance()
        self.shipper.expire()
        m = self.metrics
        m.waiting.set(len(self.waiting))
        m.running.set(len(self.active))
        m.transfers.set(len(self.shipper))
        m.free_blocks.set(self.engine.num_free_blocks)
        m.orphan_bytes.set(self.waiting.orphan_bytes)
        m.prefix_cached_blocks.set(self.engine.blocks.allocator.num_cached)
        self.membership.tick(self._load)

    def drain(self) -> None:
        """SIGTERM: refuse new requests (as unavailable: the router sends them elsewhere); what is
        held (waiting for embeddings, computing, handing its KV over) finishes."""
        self.membership.drain()

    def idle(self) -> bool:
        return not (len(self.waiting) or self.active or len(self.shipper))

    def _load(self) -> Load:
        self.health.info["state"] = self.membership.state.value
        return Load(
            len(self.active), len(self.waiting), self.engine.num_free_blocks, self.engine.blocks.num_blocks
        )

    def _router_gone(self, router: str) -> None:
        """Drop the requests whose first token goes to ``router`` (and their KV hand-offs)."""
        held = [
            *(w.msg.request_id for w in self.waiting.requests.values() if w.msg.reply_to == router),
            *(rid for rid, a in self.active.items() if a.msg.reply_to == router),
            *(rid for rid, t in self.shipper.transfers.items() if t.reply_to == router),
        ]
        for rid in held:
            log.warning("[%s] dropped: its router %s is gone", rid, router)
            self._abort(rid)

    def close(self) -> None:
        self.membership.leave(self._load())
        self.membership.close()
        self._unlisten()
        self.requests.close()
        self.inbox.close()
        self.outbox.close()
        self.sender.close()
        self.tracer.shutdown()

    # ----- 1. receive ----------------------------------------------------------------------------
    def receive(self, timeout: float) -> None:
        socks = [self.requests.zmq_socket, self.inbox.zmq_socket, *self.sender.sockets]
        if timeout and not wait_readable(socks, timeout):
            return
        for _ in range(MAX_RECV_PER_STEP):  # malformed messages count: a flood of them cannot stall a step
            try:
                got = self.requests.recv(0)
            except WireError as e:
                self._malformed(e, "request")
                if e.peer is not None:
                    self._answer(e.peer, rejects.malformed(e, self.name, Stage.PREFILL))
                continue
            if got is None:
                break
            self._on_request(*got)
        for _ in range(MAX_RECV_PER_STEP):
            try:
                msg = self.inbox.recv(0)
            except WireError as e:
                self._malformed(e, "embedding")
                self._bad_embedding(e)
                continue
            if msg is None:
                break
            if msg.request_id is not None:
                self.waiting.add_embedding(msg)
        self.shipper.handle(self.sender.poll(0))

    def _malformed(self, e: WireError, what: str) -> None:
        self.metrics.errors.labels(ErrorKind.BAD_REQUEST.value).inc()
        self.metrics.malformed.inc()
        log.warning("rejected a malformed %s message (request %s): %s", what, e.request_id, e)

    def _bad_embedding(self, e: WireError) -> None:
        """A PULL has nobody to answer; the request the message names (if it waits here) learns
        now that one of its images will not come, instead of at its deadline."""
        rid = rejects.valid_request_id(e.request_id)
        w = self.waiting.requests.get(rid) if rid is not None else None
        if w is not None and not w.problem:
            w.problem = f"a malformed image embedding arrived: {e}"[:4096]

    def _holds(self, request_id: str) -> bool:
        return (
            request_id in self.waiting.requests
            or request_id in self.active
            or request_id in self.shipper.transfers
        )

    def _answer(self, peer: bytes, msg: StageError) -> None:
        try:
            self.requests.send(peer, msg, self.cfg.send_timeout_s)
        except WireError as e:
            log.warning("could not answer a router: %s", e)

    def _on_request(self, peer: bytes, msg: PrefillRequest | AbortRequest | RouterHeartbeat) -> None:
        if isinstance(msg, RouterHeartbeat):
            self.membership.heard(msg)
            return
        if isinstance(msg, AbortRequest):
            self._abort(msg.request_id)
            return
        self.metrics.requests.inc()
        rid = msg.request_id
        if self.inflight.full(peer, rid):
            self.metrics.errors.labels(ErrorKind.OVERLOADED.value).inc()
            self.metrics.peer_limit_refusals.inc()
            self._answer(peer, rejects.overloaded(rid, self.inflight.limit, self.name, Stage.PREFILL))
            return
        vocab = self.engine.model_config.text.vocab_size
        if max(msg.prompt_token_ids) >= vocab:  # the embedding lookup would fail every step it runs in
            text = f"prompt token {max(msg.prompt_token_ids)} is outside the vocabulary of {vocab}"
            self._answer(peer, StageError(rid, None, ErrorKind.BAD_REQUEST, text, self.name, Stage.PREFILL))
            return
        if self.membership.draining:
            self._error(rid, msg.reply_to, ErrorKind.UNAVAILABLE, "draining: taking no new requests")
            return
        if rid in self.active or rid in self.shipper.transfers:
            text = "request id already in use"
            self._answer(peer, StageError(rid, None, ErrorKind.BAD_REQUEST, text, self.name, Stage.PREFILL))
            return
        try:
            self.waiting.add_request(msg)
        except (KeyError, OverflowError) as e:
            kind = ErrorKind.OVERLOADED if isinstance(e, OverflowError) else ErrorKind.BAD_REQUEST
            self._error(rid, msg.reply_to, kind, str(e))
            return
        self.inflight.hold(peer, rid)

    def _step_failed(self, e: Exception) -> None:
        """The engine raised: every request in it fails (internal), and they leave it, so that the
        next step runs without them; the worker goes on serving."""
        log.exception("engine step failed; failing the %d requests in the engine", len(self.active))
        message = f"engine step failed: {type(e).__name__}: {e}"
        for rid, a in list(self.active.items()):
            self._abort(rid)
            self._error(rid, a.msg.reply_to, ErrorKind.INTERNAL, message)

    def _abort(self, request_id: str) -> None:
        found = self.waiting.remove(request_id) | self.shipper.abort(request_id)
        if self.active.pop(request_id, None) is not None:
            found = self.engine.abort(request_id) or True
        log.info("[%s] aborted%s", request_id, "" if found else " (not here)")

    # ----- 2. admit ------------------------------------------------------------------------------
    def admit(self) -> None:
        for w in self.waiting.expire():
            have = len(w.images.results)
            self._error(
                w.msg.request_id, w.msg.reply_to, ErrorKind.DEADLINE_EXCEEDED,
                f"deadline passed with {have} of {len(w.msg.images)} image embeddings received",
            )  # fmt: skip
        for w in self.waiting.pop_done(self.engine.guide_ready):
            self._admit(w)

    def _admit(self, w: Waiting) -> None:
        msg = w.msg
        if w.images.failed or w.problem:
            e = w.images.errors[0] if w.images.errors else None
            kind = e.kind if e else ErrorKind.BAD_REQUEST
            text = f"image {e.image_index} failed at {e.source}: {e.message}" if e else w.problem
            self._error(msg.request_id, msg.reply_to, kind, text, e.stage if e else Stage.PREFILL)
            return
        if w.clock.now() > msg.deadline:
            self._error(msg.request_id, msg.reply_to, ErrorKind.DEADLINE_EXCEEDED, "deadline passed")
            return
        try:
            request = build_request(msg, w.images.ordered(), self.engine.pool.dtype)
            self.engine.add_request(request)
        except ValueError as e:
            self._error(msg.request_id, msg.reply_to, ErrorKind.BAD_REQUEST, str(e))
            return
        now = time.monotonic()
        encoders = [st for r in w.images.ordered() for st in r.stamps]
        waited = [w.clock.stamp(StageName.EMBEDDING_WAIT, w.clock.mono, now)] if msg.images else []
        self.active[msg.request_id] = Active(msg, w.clock, now, encoders, waited)
        self.metrics.prompt_tokens.inc(len(msg.prompt_token_ids))

    # ----- 3. run --------------------------------------------------------------------------------
    def mark_started(self, step_start: float) -> None:
        """Requests whose first chunk ran in the step that began at ``step_start``."""
        for a in self.active.values():
            if a.started is None and self.engine.kv_progress(a.msg.request_id)[0]:
                a.started = step_start

    # ----- 4. send -------------------------------------------------------------------------------
    def send(self, outputs: list[TokenOutput]) -> None:
        by_router: dict[str, list[TokenOutput]] = {}
        stamps: dict[str, list[StageStamp]] = {}
        for out in outputs:
            a = self.active.pop(out.request_id)
            msg = a.msg
            by_router.setdefault(msg.reply_to, []).append(out)
            now = time.monotonic()
            self.metrics.ttft.observe(now - a.admitted)
            rid = out.request_id
            stamps[rid] = self._stamp_prefill(a, now)
            if (seq := self.engine.seqs.get(rid)) is not None:
                self.metrics.cached_prompt_tokens.inc(seq.num_cached_tokens)
            if out.finish_reason is not FinishReason.PREFILLED:  # finished at its first token
                if rid in self.shipper.transfers:
                    self.shipper.cancel(rid, f"finished at the first token ({out.finish_reason})")
                else:
                    self.engine.release(rid)
                continue
            if rid not in self.shipper.transfers:
                if len(self.shipper) >= self.cfg.max_transfers:
                    self.engine.abort(rid)
                    self._error(rid, msg.reply_to, ErrorKind.OVERLOADED, "too many transfers waiting")
                    continue
                self.shipper.start(rid, msg.decode_address, msg.reply_to, a.clock.trace(a.traceparent))
            if rid in self.shipper.transfers:  # (start fails at once when the worker is unreachable)
                self.shipper.prefilled(rid, [out.token_id])
        for reply_to, outs in by_router.items():
            if not self._push(reply_to, token_batch(self.name, [[o] for o in outs], stamps)):
                self._router_gone(reply_to)  # its inbox is full or gone: nobody reads these answers

    def _stamp_prefill(self, a: Active, now: float) -> list[StageStamp]:
        """The first token is out: the request's stages here, with the encoders' before them."""
        started = a.started if a.started is not None else a.admitted
        own = [
            *a.waited,
            a.clock.stamp(StageName.PREFILL_QUEUE, a.admitted, started),
            a.clock.stamp(StageName.PREFILL, started, now),
        ]
        observe(self.metrics.stages, own)
        self.tracer.export(a.traceparent, a.msg.request_id, own)
        return a.encoders + own

    def reserve_early(self) -> None:
        """Offer prompts to their decode workers once their first chunk is computed, so that the KV
        of later chunks ships while they compute (``--kv-pipeline``)."""
        if not self.cfg.kv_pipeline:
            return
        for rid, a in list(self.active.items()):
            if len(self.shipper) >= self.cfg.max_transfers:
                return
            if (
                rid not in self.shipper.transfers
                and a.msg.sampling.max_tokens > 1
                and self.engine.kv_progress(rid)[1] > 0
            ):
                self.shipper.start(rid, a.msg.decode_address, a.msg.reply_to, a.clock.trace(a.traceparent))

    def _transferred(self, t: Transfer) -> None:
        self.metrics.kv_bytes.inc(t.nbytes)
        self.metrics.transfers_done.inc()
        self.metrics.transfer_seconds.observe(time.monotonic() - t.started)

    def _transfer_failed(
        self, request_id: str, reply_to: str, kind: ErrorKind, message: str, stage: Stage
    ) -> None:
        """The shipper gave up (its blocks are freed): the request may still be prefilling."""
        self.active.pop(request_id, None)
        self._error(request_id, reply_to, kind, message, stage)

    def _error(
        self, request_id: str, reply_to: str, kind: ErrorKind, message: str, stage: Stage = Stage.PREFILL
    ) -> None:
        """Tell the router; ``stage`` is the one that failed (the shipper names decode)."""
        self.metrics.errors.labels(kind.value).inc()
        log.info("[%s] %s: %s", request_id, kind.value, message)
        self._push(reply_to, StageError(request_id, None, kind, message[:4096], self.name, stage))

    def _push(self, address: str, msg: TokenBatch | StageError) -> bool:
        try:
            self.outbox.send(address, msg, self.cfg.send_timeout_s)
            return True
        except WireError as e:
            log.warning("could not deliver to the router at %s: %s", address, e)
            return False
