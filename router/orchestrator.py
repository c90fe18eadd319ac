"""The one owner of the router's ZMQ sockets: a background thread that runs every request's trip
through encoders, prefill and decode.

Owns: the inbox (PULL, bound; tokens and errors from prefill and decode, load reports from every
worker), one DEALER per prefill worker (requests, aborts; errors back), one DEALER per encoder
(``EncodeRequest``; ``CacheMiss`` / errors back), a PUSH pool to decode control inboxes (aborts).
Workers come and go while it runs (``router.workers``): a report from a new encoder or prefill
worker opens its DEALER, a worker gone (silent or leaving) and no longer referenced has its
socket closed. Every ``HEARTBEAT_S`` it sends each worker a ``RouterHeartbeat`` on the channel it
sends requests by, so that workers drop this router's requests if it dies.
ZMQ sockets are not thread-safe, so nothing else touches them: the HTTP side talks to this thread
through a bounded queue of commands (``Submit``, ``Abort``, ``Snapshot``) and gets ``Event``s
back through each job's thread-safe ``sink`` (an asyncio queue per request). A queued command also
writes a byte to a pipe the thread polls with its sockets: it sleeps until a message, a command or
its next timed check (every ``CHECK_S``), not in short polls (a 2 ms poll cost an idle router 30 ms
of CPU a second).

Request life cycle (one loop turn: commands, receive, timeouts):

1. ``submit`` takes an admission slot (``max_inflight``) and queues the job (503 when full).
2. Dispatch: pick a prefill and a decode worker by load and the encoders for the images (cache-
   aware: a known image goes without its bytes to the encoder that has it; a ``CacheMiss``
   resends it with bytes); send ``PrefillRequest`` then the ``EncodeRequest``s. With no usable
   worker for a stage the attempt waits (``parked``) up to ``--heartbeat-timeout-s`` for one: a
   worker whose reports were late under load, or a replacement joining.
3. Tokens: the first from prefill, the rest from decode, forwarded in order (``SequenceTokens.index``:
   two senders, so decode's tokens may come before prefill's first; they wait for it).
4. A stage error, a worker gone (silent, leaving, or unready if configured): while attempts are
   left, the attempt is aborted and the job dispatched again avoiding the worker of the stage that
   failed (``StageError.stage``: the decode worker for ``decode``, else the prefill worker) (wire
   id ``<rid>.r<n>``); otherwise the client gets the error. Before the first token that is a
   retry; after it a migration: the new attempt runs the prompt followed by the tokens already
   streamed (``router.jobs``), so the client's stream goes on where it stopped, nothing repeated.
   The prefill worker is needed until the decode worker has taken the KV over (its first token):
   a prefill worker gone before that fails the attempt too.
5. End: finish reason, error, deadline, or ``abort`` (client gone, stop string): the request is
   aborted in prefill and decode (best effort) and its slot and load counts are released.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import time
from typing import Any

import zmq

from router.attempts import Live, Parked
from router.backend import Abort, Backend, Snapshot, Submit
from router.jobs import Event, Job, VisionTokens, encode_request, prefill_request
from router.metrics import RouterMetrics
from router.workers import Decode, Encoder, Member, Prefill, Workers
from shared.timeline import StageName
from shared.wire import CacheMiss, DealerSocket, PullSocket, PushPool, StageError, WireError
from shared.wire.messages import (
    AbortRequest,
    ErrorKind,
    LoadReport,
    RouterHeartbeat,
    SequenceTokens,
    Stage,
    TokenBatch,
)

log = logging.getLogger("router.orchestrator")
RETRYABLE = {ErrorKind.UNAVAILABLE, ErrorKind.OVERLOADED, ErrorKind.INTERNAL}
HEARTBEAT_S = 0.5  # between this router's heartbeats to each worker
CHECK_S = 0.05  # between checks of deadlines, parked attempts and silent workers


class Orchestrator(Backend):
    def __init__(
        self, workers: Workers, metrics: RouterMetrics, *, inbox: str, advertise_host: str,
        tokens: VisionTokens, max_inflight: int, max_per_worker: int, max_retries: int,
    ) -> None:  # fmt: skip
        super().__init__(metrics, max_inflight, "orchestrator")
        self.workers = workers
        self.inbox_address, self.advertise_host = inbox, advertise_host
        self.tokens = tokens
        self.max_per_worker, self.max_retries = max_per_worker, max_retries
        self.live: dict[str, Live] = {}  # by wire id
        self.by_rid: dict[str, Live] = {}
        self.parked: dict[str, Parked] = {}  # by request id: attempts waiting for a usable worker
        self._woken, self._waker = os.pipe()  # a byte per queued command: wakes the thread's poll
        os.set_blocking(self._waker, False)
        os.set_blocking(self._woken, False)

    def start(self, timeout: float = 10.0) -> None:
        super().start(timeout)
        if not self.reply_to:
            raise RuntimeError(f"the orchestrator could not bind its inbox {self.inbox_address}")

    # ----- the thread -------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.inbox = PullSocket(
                self.inbox_address, bind=True, accept=[TokenBatch, StageError, LoadReport]
            )
        except WireError as e:
            log.error("%s", e)
            self.started.set()
            return
        port = self.inbox.endpoint.rsplit(":", 1)[1]
        self.reply_to = f"tcp://{self.advertise_host}:{port}"
        self.prefill_socks: dict[str, DealerSocket] = {}
        self.encoder_socks: dict[str, DealerSocket] = {}
        self.controls = PushPool(max_sockets=4096)  # one per decode worker: heartbeats reach all
        self.poller = zmq.Poller()
        self.poller.register(self.inbox.zmq_socket, zmq.POLLIN)
        self.poller.register(self._woken, zmq.POLLIN)
        for w in (*self.workers.encoders.values(), *self.workers.prefills.values()):
            self._connect(w)
        self.started.set()
        log.info("orchestrator inbox %s (advertised as %s)", self.inbox.endpoint, self.reply_to)
        next_check = next_beat = 0.0
        while not self.stopping.is_set():
            more = self._commands()  # (then no sleep: the rest of a burst is read next turn)
            wait_s = 0.0 if more else min(next_check, next_beat) - time.monotonic()
            ready = dict(self.poller.poll(math.ceil(max(0.0, wait_s) * 1000)))
            if self._woken in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._woken, 4096)  # the commands are read at the top of the loop
            socks: list[PullSocket | DealerSocket] = [
                self.inbox, *self.prefill_socks.values(), *self.encoder_socks.values()
            ]  # fmt: skip
            for s in socks:
                if s.zmq_socket in ready:
                    self._drain(s)
            now = time.monotonic()
            if now >= next_check:
                self._check(now)
                next_check = now + CHECK_S
            if now >= next_beat:
                self._beat()
                next_beat = now + HEARTBEAT_S
        for sock in [self.inbox, *self.prefill_socks.values(), *self.encoder_socks.values()]:
            sock.close()
        self.controls.close()

    def stop(self) -> None:
        super().stop()
        if self._woken >= 0 and not self.thread.is_alive():  # a stuck thread keeps its pipe
            fds, self._woken, self._waker = (self._woken, self._waker), -1, -1
            for fd in fds:
                os.close(fd)

    def _wake(self) -> None:
        if self._waker < 0:  # stopped: its descriptor number may belong to another file by now
            return
        with contextlib.suppress(BlockingIOError):  # the pipe is full: the thread has wake-ups pending
            os.write(self._waker, b"\0")

    def _connect(self, w: Member) -> None:
        """Open the DEALER to an encoder or prefill worker (once)."""
        if isinstance(w, Encoder) and w.zmq not in self.encoder_socks:
            sock = self.encoder_socks[w.zmq] = DealerSocket(w.zmq, bind=False, accept=[CacheMiss, StageError])
        elif isinstance(w, Prefill) and w.zmq not in self.prefill_socks:
            sock = self.prefill_socks[w.zmq] = DealerSocket(w.zmq, bind=False, accept=[StageError])
        else:
            return
        self.poller.register(sock.zmq_socket, zmq.POLLIN)

    def _joined(self, report: LoadReport) -> None:
        """A worker's report; a new worker gets its socket and this router's first heartbeat at
        once (before any request can reach it, so that it knows whose requests to drop if this
        router dies)."""
        new = not self.workers.knows(report)
        w = self.workers.heard(report, time.monotonic())
        self._connect(w)
        if new:
            self._beat([w])

    def _disconnect(self, address: str) -> None:
        for socks in (self.encoder_socks, self.prefill_socks):
            if (sock := socks.pop(address, None)) is not None:
                self.poller.unregister(sock.zmq_socket)
                sock.close()

    def _beat(self, workers: list[Member] | None = None) -> None:
        """Tell every worker (or ``workers``) this router is alive; never waits: a full queue
        skips a beat."""
        beat = RouterHeartbeat(self.reply_to, time.time())
        everyone = [
            *self.workers.encoders.values(),
            *self.workers.prefills.values(),
            *self.workers.decodes.values(),
        ]
        for w in everyone if workers is None else workers:
            with contextlib.suppress(WireError):
                if isinstance(w, Decode):
                    self.controls.send(w.control, beat, 0.0)
                elif (sock := self._socket(w)) is not None:
                    sock.send(beat, 0.0)

    def _socket(self, w: Member) -> DealerSocket | None:
        if isinstance(w, Encoder):
            return self.encoder_socks.get(w.zmq)
        return self.prefill_socks.get(w.zmq) if isinstance(w, Prefill) else None

    def _commands(self) -> bool:
        """Carry out up to 256 queued commands; whether more may be waiting."""
        for _ in range(256):
            try:
                command = self.commands.get_nowait()
            except queue.Empty:
                return False
            match command:
                case Submit(job):
                    self._try_dispatch(job, 0, set())
                case Abort(rid, reason):
                    if (live := self.by_rid.get(rid)) is not None:
                        self._end(live, abort=reason)
                    elif self.parked.pop(rid, None) is not None:
                        self.metrics.aborts.labels(reason.split(":")[0]).inc()
                        self.slots.release()
                case Snapshot(future):
                    future.set_result(self._snapshot())
        return True

    def _drain(self, sock: PullSocket | DealerSocket) -> None:
        for _ in range(1024):
            try:
                msg = sock.recv(0)
            except WireError as e:
                log.warning("bad message: %s", e)
                continue
            if msg is None:
                return
            if isinstance(msg, TokenBatch):
                self._tokens(msg)
            elif isinstance(msg, LoadReport):
                self._joined(msg)
            elif isinstance(msg, StageError):
                if (live := self.live.get(msg.request_id or "")) is not None:
                    self._failed(live, msg.kind, f"{msg.source}: {msg.message}", msg.stage)
            elif isinstance(msg, CacheMiss) and (live := self.live.get(msg.request_id)) is not None:
                address = next((a for a, idx in live.encoders.items() if msg.image_indexes[0] in idx), None)
                if address is not None:
                    req = encode_request(live.job, live.wire_id, msg.image_indexes, live.prefill.inbox, True)
                    self._send(self.encoder_socks[address], req)

    def _try_dispatch(self, job: Job, attempt: int, tried: set[str], until: float | None = None) -> None:
        try:
            self._dispatch(job, attempt, tried, until)
        except Exception:  # one request's bug must not stop the loop every request needs
            log.exception("dispatch failed", extra={"request_id": job.rid})
            self._internal_error(job)

    def _dispatch(self, job: Job, attempt: int, tried: set[str], until: float | None = None) -> None:
        """Send an attempt to workers. With none usable for a stage, the job waits for one (a
        worker's reports may be late under load, or a replacement joining) until ``until``, at
        most ``--heartbeat-timeout-s`` from its first try, then fails as overloaded."""
        now = time.monotonic()
        prefill = self.workers.pick_prefill(tried, self.max_per_worker, now)
        decode = self.workers.pick_decode(tried, now)
        hashes = [im.hash for im in job.images]
        known = {h for h in hashes if h in self.workers.image_home}
        plan = self.workers.assign_images(hashes, now) if job.images else {}
        if prefill is None or decode is None or (job.images and not plan):
            stage = "prefill" if prefill is None else "decode" if decode is None else "encoder"
            until = min(job.deadline, now + self.workers.heartbeat_timeout_s) if until is None else until
            if now < until:
                self.by_rid.pop(job.rid, None)
                self.parked[job.rid] = Parked(job, attempt, tried, until)
                return
            log.warning("no %s worker is available", stage, extra={"request_id": job.rid})
            self._finish_job(
                job, Event(error=ErrorKind.OVERLOADED, message=f"no {stage} worker is available")
            )
            return
        wire_id = job.rid if attempt == 0 else f"{job.rid}.r{attempt}"
        if attempt == 0:
            job.timing.stamp(StageName.ADMISSION, job.submitted, now)
        live = Live(job, wire_id, attempt, prefill, decode, plan, tried=tried, resumed=len(job.streamed))
        if job.streamed:  # a migration: the request's token timing goes on
            live.submitted, live.tokens = job.submitted, len(job.streamed)
            live.first = live.last = now
        self.live[wire_id], self.by_rid[job.rid] = live, live
        prefill.inflight += 1
        decode.inflight += 1
        for address, idx in plan.items():
            self._encoder(address).inflight += len(idx)
        msg = prefill_request(job, wire_id, self.tokens, decode.kv, self.reply_to)
        if not self._send(self.prefill_socks[prefill.zmq], msg):
            self._failed(
                live, ErrorKind.UNAVAILABLE, f"prefill {prefill.zmq} does not take requests", Stage.PREFILL
            )
            return
        for address, idx in plan.items():
            cached = [i for i in idx if hashes[i] in known]
            for subset, with_bytes in ((cached, False), ([i for i in idx if i not in cached], True)):
                if subset:
                    req = encode_request(job, wire_id, subset, prefill.inbox, with_bytes)
                    self._send(self.encoder_socks[address], req)
        log.info(
            "dispatched as %s to prefill %s, decode %s",
            wire_id,
            prefill.zmq,
            decode.kv,
            extra={"request_id": job.rid},
        )

    def _tokens(self, batch: TokenBatch) -> None:
        for rec in batch.records:
            live = self.live.get(rec.request_id)
            if live is None:
                continue
            due = live.in_turn(rec)
            if due is None:
                self._failed(live, ErrorKind.INTERNAL, "token records out of order", Stage.ROUTER)
                continue
            for turn in due:
                if self._stream(live, turn):
                    break

    def _stream(self, live: Live, rec: SequenceTokens) -> bool:
        """Forward a record in its turn to the client; True when it ended the request."""
        now = time.monotonic()
        self._release_prefill(live)
        live.job.timing.add(rec.stamps)
        live.job.streamed.extend(rec.token_ids)
        n, ended = len(rec.token_ids), rec.finish_reason is not None
        for _ in range(n):
            self.metrics.token(live, now)
        lps: list[float | None] = list(rec.logprobs) if rec.logprobs is not None else [None] * n
        top = [
            list(zip(ids, lp, strict=True))
            for ids, lp in zip(rec.top_token_ids, rec.top_logprobs, strict=True)
        ]
        live.job.sink(Event(list(zip(rec.token_ids, lps, strict=True)), top, finish=rec.finish_reason))
        if ended:
            self._end(live)
        return ended

    def _failed(self, live: Live, kind: ErrorKind, message: str, stage: Stage) -> None:
        """An attempt failed at ``stage``. Retryable, with attempts and time left, and (after tokens
        were streamed) resumable: run the job again avoiding that stage's worker (encoders are not
        avoided: images go where they are cached, so an encoder's failure, like prefill's own,
        moves the job to another prefill worker). Otherwise the client gets the error."""
        job = live.job
        if (
            kind in RETRYABLE
            and (not job.streamed or job.resumable(self.tokens))
            and live.attempt < self.max_retries
            and time.monotonic() < job.deadline
        ):
            how = f"migrating after {len(job.streamed)} tokens" if job.streamed else "retrying"
            log.warning(
                "attempt %d failed (%s); %s", live.attempt, message, how, extra={"request_id": job.rid}
            )
            self.metrics.retries.inc()
            if job.streamed:
                self.metrics.migrations.inc()
            tried = live.tried | {live.decode.kv if stage is Stage.DECODE else live.prefill.zmq}
            self._end(live, abort="retrying elsewhere", keep_slot=True)
            self._try_dispatch(job, live.attempt + 1, tried)
            return
        log.warning("failed: %s %s", kind, message, extra={"request_id": job.rid})
        self._end(live, abort=f"failed: {kind}", event=Event(error=kind, message=message))

    def _check(self, now: float) -> None:
        parked, self.parked = self.parked, {}
        for p in parked.values():
            self._try_dispatch(p.job, p.attempt, p.tried, p.until)
        alive = lambda w: self.workers.alive(w, now)  # noqa: E731
        for live in list(self.live.values()):
            if now > live.job.deadline:
                self._end(
                    live,
                    abort="deadline",
                    event=Event(error=ErrorKind.DEADLINE_EXCEEDED, message="request timed out"),
                )
            elif not alive(live.decode):
                self._failed(
                    live, ErrorKind.UNAVAILABLE, f"decode worker {live.decode.kv} is gone", Stage.DECODE
                )
            elif not live.decoding and not alive(live.prefill):
                self._failed(
                    live, ErrorKind.UNAVAILABLE, f"prefill worker {live.prefill.zmq} is gone", Stage.PREFILL
                )
            elif not live.prefill_done and (
                lost := [a for a in live.encoders if not alive(self._encoder(a))]
            ):
                self._failed(live, ErrorKind.UNAVAILABLE, f"encoder {lost[0]} is gone", Stage.ENCODER)
        busy = {a for v in self.live.values() for a in (v.prefill.zmq, v.decode.kv, *v.encoders)}
        for address in self.workers.expire(now, busy):
            self._disconnect(address)
        waiting = [v for v in self.live.values() if v.tokens == 0]
        self.metrics.queue.labels("admission").set(self.commands.qsize())
        self.metrics.queue.labels("encoder").set(sum(e.inflight for e in self.workers.encoders.values()))
        self.metrics.queue.labels("prefill").set(len(waiting) + len(self.parked))
        self.metrics.queue.labels("decode").set(len(self.live) - len(waiting))
        self.metrics.inflight.set(len(self.by_rid) + len(self.parked))
        self.metrics.image_homes.set(len(self.workers.image_home))
        self.metrics.image_homes_max.set(self.workers.max_homes)

    def _end(self, live: Live, abort: str = "", event: Event | None = None, keep_slot: bool = False) -> None:
        """Forget an attempt: abort it in the workers (when it did not finish by itself), release
        its load counts, and unless it is being retried, release the job's slot."""
        if abort:
            self.metrics.aborts.labels(abort.split(":")[0]).inc()
            msg = AbortRequest(live.wire_id, abort, "router")
            self._send(self.prefill_socks[live.prefill.zmq], msg, 0.2)
            with contextlib.suppress(WireError):
                self.controls.send(live.decode.control, msg, 0.2)
        self._release_prefill(live)
        live.decode.inflight -= 1
        self.live.pop(live.wire_id, None)
        if not keep_slot:
            self.by_rid.pop(live.job.rid, None)
            self.metrics.e2e.observe(time.monotonic() - live.submitted)
            if event is not None:
                live.job.sink(event)
            self.slots.release()

    def _internal_error(self, job: Job) -> None:
        event = Event(error=ErrorKind.INTERNAL, message="the router failed to dispatch the request")
        live = self.by_rid.get(job.rid)
        if live is not None and self.live.get(live.wire_id) is live:  # the attempt went out
            self._end(live, abort="internal", event=event)
            return
        self.parked.pop(job.rid, None)  # else no attempt is out (a retry's old one is ended)
        self._finish_job(job, event)

    def _finish_job(self, job: Job, event: Event) -> None:
        self.by_rid.pop(job.rid, None)
        job.sink(event)
        self.slots.release()

    def _release_prefill(self, live: Live) -> None:
        """The first token (or the end) frees the attempt's share of prefill and encoder load."""
        if live.prefill_done:
            return
        live.prefill_done = True
        live.prefill.inflight -= 1
        for address, idx in live.encoders.items():
            self._encoder(address).inflight -= len(idx)

    def _encoder(self, address: str) -> Encoder:
        return self.workers.encoders[address]  # kept while a live request names it (``expire``)

    def _send(self, sock: DealerSocket, msg: Any, timeout: float = 1.0) -> bool:
        try:
            sock.send(msg, timeout)
            return True
        except WireError as e:
            log.warning("send to %s failed: %s", sock.address, e)
            return False
        except Exception:  # a message that cannot be encoded: that attempt fails, not the loop
            log.exception("send to %s failed", sock.address)
            return False

    def _snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "requests": [
                {
                    "id": v.job.rid,
                    "wire_id": v.wire_id,
                    "prefill": v.prefill.zmq,
                    "decode": v.decode.kv,
                    "tokens": v.tokens,
                }
                for v in self.live.values()
            ],
            "encoders": [{"zmq": e.zmq, **self._member(e, now)} for e in self.workers.encoders.values()],
            "prefills": [{"zmq": p.zmq, **self._member(p, now)} for p in self.workers.prefills.values()],
            "decodes": [{"kv": d.kv, **self._member(d, now)} for d in self.workers.decodes.values()],
        }

    def _member(self, w: Member, now: float) -> dict[str, Any]:
        return {
            "ready": w.ready, "live": self.workers.alive(w, now), "state": w.state.value, "static": w.static,
            "inflight": w.inflight,
        }  # fmt: skip
