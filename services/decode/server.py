"""The decode worker: KV and state in from prefill, one token per step out to the router.

What it owns: the language model and ``lm_head`` (no vision weights), an engine running
continuous batching over imported sequences, and the reservations and imports of KV transfers
(``imports.py``).

Sockets:
* a ``KVReceiver`` (``shared.transfer``, a ROUTER at ``--kv-port``): prefill workers reserve
  room, send KV, get grants and acks on the same connection; with ``--kv-transfer mooncake`` the
  pool is registered with Mooncake's Transfer Engine and prefill writes the KV into it directly.
* ``PULL`` at ``--port`` (control): ``AbortRequest`` and ``RouterHeartbeat`` from routers; a
  malformed one has nobody to answer (neither names a reply address worth trusting): it is counted
  and logged, like the malformed transfer messages the receiver answered. Connections ZMQ drops
  for an oversized frame are counted on every bound socket (``shared.wire.monitor``).
* ``PUSH`` to each request's ``reply_to`` (``PushPool``): one ``TokenBatch`` per step and router,
  or ``StageError``; ``LoadReport`` to every router of ``--report-to`` each ``--report-interval-s``
  (``services.common.membership``: registration, heartbeat, drain). A router gone silent: its
  requests are aborted here.
* HTTP on ``--http-port``: /health, /ready (with the current load), /metrics.

Life cycle of a request, one stage per step of the loop:
1. receive: a reservation is granted when the pool has room (blocks reserved and named in the
   grant), else queued or refused; KV lands in the reserved blocks while prefill computes
   (copied from KVLayer frames, or written by the sender); on KVDone, with the first token, the
   sequence joins the running batch and prefill is acked. Aborts end a request anywhere.
2. schedule + run: one engine step over every running sequence (swapping out the newest under
   memory pressure: imported sequences cannot be recomputed here), no sooner than
   ``--step-interval-ms`` after the last one began (receive waits out the rest: imports land and
   join the step).
3. send: the step's tokens, batched per router (``--stream-interval`` N: a request's tokens go N
   to a record); a finished request frees its blocks, which may let a queued reservation be
   granted in the next turn.
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
from services.decode.config import DecodeConfig
from services.decode.imports import Import, Importer
from services.decode.metrics import DecodeMetrics
from shared.engine import Engine, TokenOutput
from shared.timeline import RequestClock, Service, StageName, Tracer, observe
from shared.transfer import KVReceiver
from shared.wire import PullSocket, PushPool, StageError, WireError, monitor
from shared.wire.messages import (
    AbortRequest,
    ErrorKind,
    KVReserve,
    RouterHeartbeat,
    Stage,
    StageStamp,
    TokenBatch,
)
from shared.wire.poll import wait_readable

log = logging.getLogger("decode")


@dataclass
class Timing:
    """A running request's timeline here: monotonic times, placed by the request's ``clock``."""

    clock: RequestClock
    traceparent: str
    imported: float  # the import finished
    stamps: list[StageStamp]  # not sent yet (the hand-off's, until the first token)
    decoding: float | None = None  # the step of its first token began


class DecodeServer:
    def __init__(
        self, cfg: DecodeConfig, engine: Engine, receiver: KVReceiver, metrics: DecodeMetrics, health: Health
    ) -> None:
        self.cfg, self.engine, self.metrics, self.health = cfg, engine, metrics, health
        self.receiver = receiver
        self.control = PullSocket(cfg.address(cfg.port), bind=True, accept=[AbortRequest, RouterHeartbeat])
        self.endpoint = self.control.endpoint
        self.outbox = PushPool()
        self.name = cfg.name or f"decode@{receiver.address}"
        # what load reports tell routers and prefill workers: the addresses as others reach them
        self.advertised_kv, self.advertised_control = (
            cfg.advertised(receiver.address),
            cfg.advertised(self.endpoint),
        )
        self.importer = Importer(engine, receiver, self._error, cfg.max_pending, cfg.transfer_timeout_s)
        self.importer.on_imported = self._imported
        self.routes: dict[str, str] = {}  # running request -> its router's token inbox
        self.timing: dict[str, Timing] = {}  # running requests' timelines
        self.held: dict[str, list[TokenOutput]] = {}  # tokens not sent yet (--stream-interval)
        self.step_interval = cfg.step_interval_ms / 1000
        self.next_step = 0.0  # monotonic: the next engine step starts no sooner (--step-interval-ms)
        self.tracer = Tracer(Service.DECODE, cfg.otlp_traces_endpoint, self.name)
        self._unlisten = monitor.count_drops(metrics.oversized_drops, metrics.protocol_drops)
        self._rejected = receiver.rejected  # malformed transfer messages, as counted so far
        self.membership = Membership(
            cfg,
            Stage.DECODE,
            self.name,
            self.advertised_kv,
            self.advertised_control,
            health.url(cfg.reachable_host),
        )
        metrics.total_blocks.set(engine.blocks.num_blocks)
        graph = engine.runner.graph  # None with --no-compile-decode; not ready if compiling failed
        metrics.graph_ready.set(float(graph is not None and graph.ready))

    # ----- the loop ------------------------------------------------------------------------------
    def serve(self, stop: threading.Event) -> None:
        self.health.ready = True
        log.info(
            "%s serving (control %s, %d KV blocks)", self.name, self.endpoint, self.engine.blocks.num_blocks
        )
        serve_steps(self.step, stop, self.metrics.errors, log)

    def step(self) -> None:
        self.health.tick()
        running = self.engine.has_unfinished()
        self.receive(max(0.0, self.next_step - time.monotonic()) if running else IDLE_POLL_S)
        for router in self.membership.gone_routers():  # after receive: a stall here is no router's silence
            self._router_gone(router)
        self.importer.expire()
        self.importer.grant_waiting()
        if self.engine.has_unfinished() and time.monotonic() >= self.next_step:
            start = time.monotonic()
            self.next_step = start + self.step_interval
            try:
                outputs = self.engine.step()
            except Exception as e:  # a bug must fail the requests it met, not every later step
                self._step_failed(e)
                return
            self.metrics.step_seconds.observe(time.monotonic() - start)
            self.send(outputs, start)
        self.report()

    def drain(self) -> None:
        """SIGTERM: routers are told (they send nothing new); what is held finishes. Reservations
        still arrive for requests a router dispatched before it heard (prefill reserves after the
        first chunk, and by then the first token may be out: refusing would fail them), so they
        are taken, and the drain ends only after a quiet spell (``services.common.main``)."""
        self.membership.drain()

    def idle(self) -> bool:
        return not (self.engine.has_unfinished() or self.importer.importing or self.importer.pending)

    def close(self) -> None:
        self.membership.leave(self._load())
        self.membership.close()
        self._unlisten()
        self.control.close()
        self.receiver.close()
        self.outbox.close()
        self.tracer.shutdown()

    # ----- 1. receive ----------------------------------------------------------------------------
    def receive(self, timeout: float) -> None:
        if timeout and not wait_readable([self.control.zmq_socket, *self.receiver.sockets], timeout):
            return
        for _ in range(MAX_RECV_PER_STEP):
            try:
                msg = self.control.recv(0)
            except WireError as e:
                log.warning("rejected a malformed control message: %s", e)
                self.metrics.errors.labels(ErrorKind.BAD_REQUEST.value).inc()
                self.metrics.malformed.inc()
                continue
            if msg is None:
                break
            if isinstance(msg, RouterHeartbeat):
                self.membership.heard(msg)
            else:
                self._abort(msg)
        self.importer.handle(self.receiver.poll(0))
        rejected, self._rejected = self.receiver.rejected - self._rejected, self.receiver.rejected
        self.metrics.malformed.inc(rejected)  # answered by the receiver (StageError bad_request)

    def _abort(self, msg: AbortRequest) -> None:
        found = self._drop(msg.request_id, f"aborted: {msg.reason}")
        if not found:
            self.importer.forget_later(msg.request_id)
        log.info("[%s] aborted%s", msg.request_id, "" if found else " (not here)")

    def _drop(self, rid: str, why: str) -> bool:
        """End a request wherever it is here (waiting for room, importing, running); whether it was."""
        found = self.importer.drop(rid, why) | self.engine.abort(rid)
        self.routes.pop(rid, None)
        self.timing.pop(rid, None)
        self.held.pop(rid, None)
        return found

    def _imported(self, msg: KVReserve, imp: Import) -> None:
        self.routes[msg.request_id] = msg.reply_to
        now, c = time.monotonic(), imp.clock
        stamps = [
            c.stamp(StageName.KV_WAIT, c.mono, imp.granted),
            c.stamp(StageName.KV_TRANSFER, imp.granted, now),
        ]
        self.timing[msg.request_id] = Timing(c, msg.trace.traceparent if msg.trace else "", now, stamps)
        self.metrics.imports.inc()
        self.metrics.kv_bytes.inc(imp.nbytes)
        self.metrics.kv_copied.inc(imp.copied)

    # ----- 3. send -------------------------------------------------------------------------------
    def send(self, outputs: list[TokenOutput], step_start: float) -> None:
        """The step's tokens, one record per request, batched per router; with ``--stream-interval``
        N a request's tokens are held until N are there or it finishes (one record for them)."""
        by_router: dict[str, list[list[TokenOutput]]] = {}
        stamps: dict[str, list[StageStamp]] = {}
        now = time.monotonic()
        for out in outputs:
            rid = out.request_id
            reply_to = self.routes.get(rid)
            if reply_to is None:
                continue
            held = self.held.setdefault(rid, [])
            held.append(out)
            t = self.timing.get(rid)
            if t is not None:
                self._stamp(out, t, step_start, now)
            if not out.finished and len(held) < self.cfg.stream_interval:
                continue
            del self.held[rid]
            by_router.setdefault(reply_to, []).append(held)
            if t is not None and t.stamps:
                stamps[rid], t.stamps = t.stamps, []
                observe(self.metrics.stages, stamps[rid])
                self.tracer.export(t.traceparent, rid, stamps[rid])
            if out.finished:
                del self.routes[rid]
        self.metrics.tokens.inc(len(outputs))
        for reply_to, records in by_router.items():
            if not self._push(reply_to, token_batch(self.name, records, stamps)):
                self._router_gone(reply_to)  # its inbox is full or gone: nobody reads these tokens

    def _stamp(self, out: TokenOutput, t: Timing, step_start: float, now: float) -> None:
        """The hand-off and queue with the first token, ``decode`` with the last (both for a
        request that ends at its first decode step); they go with the record that holds it."""
        if t.decoding is None:
            t.decoding = step_start
            self.metrics.handoff_seconds.observe(now - t.imported)
            t.stamps.append(t.clock.stamp(StageName.DECODE_QUEUE, t.imported, step_start))
        if out.finished:
            t.stamps.append(t.clock.stamp(StageName.DECODE, t.decoding, now))
            del self.timing[out.request_id]

    def _step_failed(self, e: Exception) -> None:
        """The engine raised: every request running here fails (internal; its router may migrate
        it), and they leave the engine, so that the next step runs without them."""
        log.exception("engine step failed; failing the %d requests in the engine", len(self.routes))
        message = f"engine step failed: {type(e).__name__}: {e}"
        for rid, reply_to in list(self.routes.items()):
            self._drop(rid, message)
            self._error(rid, reply_to, ErrorKind.INTERNAL, message)

    def _router_gone(self, router: str) -> None:
        """Drop the requests whose tokens go to ``router``, running or still arriving: nobody would
        read them (it stopped heartbeating, or its inbox took no tokens for ``--send-timeout-s``)."""
        imp = self.importer
        owned = [
            *(rid for rid, reply_to in self.routes.items() if reply_to == router),
            *(rid for rid, i in imp.importing.items() if i.msg.reply_to == router),
            *(rid for rid, m in imp.pending.items() if m.reply_to == router),
        ]
        for rid in owned:
            self._drop(rid, f"its router {router} is gone")
            self.metrics.errors.labels(ErrorKind.UNAVAILABLE.value).inc()
            log.warning("[%s] aborted: its router %s is gone", rid, router)

    def _load(self) -> Load:
        s = self.engine.scheduler
        queued = len(s.waiting) + len(self.importer.importing) + len(self.importer.pending)
        return Load(len(s.running), queued, self.engine.num_free_blocks, self.engine.blocks.num_blocks)

    def report(self) -> None:
        self.membership.tick(self._reported_load)

    def _reported_load(self) -> Load:
        load = self._load()
        m = self.metrics
        m.running.set(load.running)
        m.queued.set(load.queued)
        m.pending.set(len(self.importer.pending))
        m.free_blocks.set(load.free_blocks)
        m.queued_reservations.set(self.importer.num_queued)
        self.health.info.update(
            running=load.running,
            queued=load.queued,
            free_blocks=load.free_blocks,
            state=self.membership.state.value,
        )
        return load

    def _error(self, request_id: str, reply_to: str, kind: ErrorKind, message: str) -> None:
        self.metrics.errors.labels(kind.value).inc()
        self.routes.pop(request_id, None)
        self.timing.pop(request_id, None)
        self.held.pop(request_id, None)
        log.info("[%s] %s: %s", request_id, kind.value, message)
        self._push(reply_to, StageError(request_id, None, kind, message[:4096], self.name, Stage.DECODE))

    def _push(self, address: str, msg: TokenBatch | StageError) -> bool:
        try:
            self.outbox.send(address, msg, self.cfg.send_timeout_s)
            return True
        except WireError as e:
            log.warning("could not deliver to %s: %s", address, e)
            return False
