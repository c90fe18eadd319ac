"""The encoder service: image and video bytes in, vision-tower embeddings out, pushed straight to
prefill. A video is one item: the router chose its frames (``VideoSpec``), the encoder decodes
them, and its embeddings, all temporal groups, go out as one result.

What it owns: the vision tower (and nothing of the language model), the image preprocessing, a
byte-bounded LRU cache of embeddings keyed by content hash plus preprocessing settings, and a
queue of images waiting for a batched vision forward.

Sockets:
* ``ROUTER`` bound at ``--host:--port``: routers connect with DEALER sockets and send
  ``EncodeRequest``; answers on it are ``CacheMiss`` (images sent without bytes that are not
  cached), ``StageError(bad_request)`` for messages that fail validation and
  ``StageError(overloaded)`` for a request from a peer that already has
  ``--max-inflight-per-peer`` requests with images waiting here (``shared.wire.inflight``).
  Connections ZMQ drops for a frame over the size limit are counted (``shared.wire.monitor``).
* ``PUSH`` to each prefill inbox named in a request's ``reply_to`` (``PushPool``): one
  ``ImageEmbeddingResult`` per image, or a ``StageError`` in its place.
* HTTP on ``--http-port``: /health, /ready, /metrics (``metrics.py``).
* ``LoadReport`` to every router of ``--report-to`` (``services.common.membership``: registration,
  heartbeat, drain; a draining encoder answers new images with ``StageError(unavailable)``).

Life cycle of a request, one stage per step of the loop:
1. receive: decode and validate the message (a malformed one is answered on the ROUTER, never
   raised; so is one over its peer's in-flight limit); for each image: past its deadline ->
   error; cached -> result sent at once; already on its way (being prepared or queued) -> join
   it; no bytes -> ``CacheMiss`` to the router; else hand it to a preparing thread
   (``preparing.py``: hash check, decode, preprocess, off the loop).
2. collect: prepared images join the patch queue (bad bytes -> ``StageError(bad_image)`` to
   prefill); a loop with nothing queued first waits for those being prepared.
3. schedule: drop waiters past their deadline (told so), then take a batch under the patch budget
   (``batcher.py``).
4. run: one ``get_image_feature`` call for the batch.
5. send: cache each output and push it to every waiter's prefill inbox, tagged with the request id
   and image index. One request's images may come from several encoders; prefill reassembles.
"""

from __future__ import annotations

import logging
import threading
import time

from services.common.http import Health
from services.common.loop import IDLE_POLL_S, MAX_RECV_PER_STEP, serve_steps
from services.common.membership import Load, Membership
from services.encoder.config import EncoderConfig
from services.encoder.metrics import EncoderMetrics
from services.encoder.preparing import HashMismatch, Pixels, PreparePool
from shared.multimodal.image import ImageError
from shared.multimodal.video import VideoError, VideoLimits
from shared.timeline import RequestClock, Service, StageName, Tracer, observe
from shared.vision.batcher import PatchBatcher, PendingImage, Waiter
from shared.vision.cache import CachedEmbedding, EmbeddingCache
from shared.vision.runner import VisionRunner
from shared.wire import (
    CacheMiss,
    EncodeRequest,
    ErrorKind,
    ImageEmbeddingResult,
    ImageInput,
    PushPool,
    RouterSocket,
    Stage,
    StageError,
    WireError,
    monitor,
    rejects,
)
from shared.wire.inflight import PeerLimit
from shared.wire.messages import MAX_IMAGE_BYTES, RouterHeartbeat

log = logging.getLogger("encoder")

PREPARE_WAIT_S = 1.0  # the longest an idle loop waits for images being prepared before turning again


class EncoderServer:
    def __init__(
        self, cfg: EncoderConfig, runner: VisionRunner, metrics: EncoderMetrics, health: Health
    ) -> None:
        self.cfg = cfg
        self.runner = runner
        self.metrics = metrics
        self.health = health
        self.cache = EmbeddingCache(cfg.cache_bytes)
        metrics.cache_max_bytes.set(cfg.cache_bytes)
        self.video_limits = VideoLimits()  # the router checked the file against its own limits
        self.batcher = PatchBatcher(cfg.batch_patches, cfg.cross_request_batching)
        self.preparing = PreparePool(
            runner, cfg.prepare_threads, cfg.max_image_pixels, self.video_limits, cfg.max_preparing
        )
        self.requests = RouterSocket(
            cfg.bind_address, bind=True, accept=[EncodeRequest, RouterHeartbeat],
            max_frame_bytes=MAX_IMAGE_BYTES + (1 << 20),
        )  # fmt: skip
        self.outbox = PushPool()
        self.inflight = PeerLimit(cfg.max_inflight_per_peer)  # images queued, by request and peer
        self._unlisten = monitor.count_drops(metrics.oversized_drops, metrics.protocol_drops)
        self.endpoint = self.requests.endpoint
        self.name = cfg.name or f"encoder@{self.endpoint}"
        self.tracer = Tracer(Service.ENCODER, cfg.otlp_traces_endpoint, self.name)
        self.batch_started = 0.0  # time.monotonic() when the batch being sent started its forward
        self.membership = Membership(
            cfg, Stage.ENCODER, self.name, cfg.advertised(self.endpoint), http=health.url(cfg.reachable_host)
        )

    # ----- the loop ------------------------------------------------------------------------------
    def serve(self, stop: threading.Event) -> None:
        self.health.ready = True
        log.info(
            "%s serving (patch budget %d, cache %d bytes)",
            self.name,
            self.batcher.patch_budget,
            self.cache.max_bytes,
        )
        serve_steps(self.step, stop, self.metrics.errors, log)

    def step(self) -> None:
        self.health.tick()
        self.receive(IDLE_POLL_S if self.idle() else 0.0)
        self.collect()
        batch = self.schedule()
        if batch:
            outputs = self.run(batch)
            if outputs is not None:
                self.send(batch, outputs)
        self.metrics.queue_images.set(len(self.batcher))
        self.metrics.queue_patches.set(self.batcher.queued_patches)
        self.metrics.preparing_images.set(len(self.preparing))
        self.membership.tick(self._load)

    def drain(self) -> None:
        """SIGTERM: new images are refused (unavailable: the router sends them elsewhere); the
        queued ones are encoded and delivered."""
        self.membership.drain()

    def idle(self) -> bool:
        return not len(self.batcher) and not len(self.preparing)

    def _load(self) -> Load:
        self.health.info["state"] = self.membership.state.value
        return Load(queued=len(self.batcher) + len(self.preparing), cache_bytes=self.cache.bytes)

    def close(self) -> None:
        self.membership.leave(self._load())
        self.membership.close()
        self._unlisten()
        self.preparing.close()
        self.requests.close()
        self.outbox.close()
        self.tracer.shutdown()

    # ----- 1. receive ----------------------------------------------------------------------------
    def receive(self, timeout: float) -> None:
        for _ in range(MAX_RECV_PER_STEP):
            try:
                got = self.requests.recv(timeout)
            except WireError as e:
                self._reject(e)
                timeout = 0.0
                continue
            if got is None:
                return
            timeout = 0.0
            peer, msg = got
            if not isinstance(msg, RouterHeartbeat):  # nothing to track: results go to prefill, which
                self.admit(peer, msg)  # drops the requests of a router gone silent

    def _reject(self, e: WireError) -> None:
        self.metrics.errors.labels(ErrorKind.BAD_REQUEST.value).inc()
        self.metrics.malformed.inc()
        reply = rejects.malformed(e, self.name, Stage.ENCODER)
        log.warning("rejected a malformed message (request %s): %s", reply.request_id, e)
        if e.peer is not None:
            self._answer(e.peer, reply)

    def _answer(self, peer: bytes, reply: StageError) -> None:
        try:
            self.requests.send(peer, reply, self.cfg.send_timeout_s)
        except WireError as err:
            self.metrics.send_failures.inc()
            log.warning("could not answer a router: %s", err)

    def admit(self, peer: bytes, req: EncodeRequest) -> None:
        self.metrics.requests.inc()
        if self.inflight.full(peer, req.request_id):
            self.metrics.errors.labels(ErrorKind.OVERLOADED.value).inc()
            self.metrics.peer_limit_refusals.inc()
            self._answer(
                peer, rejects.overloaded(req.request_id, self.inflight.limit, self.name, Stage.ENCODER)
            )
            return
        self.metrics.images.inc(len(req.images))
        arrived, misses = time.monotonic(), []
        clock = RequestClock.received(req.trace)
        deadline = clock.local_deadline(req.deadline)
        traceparent = req.trace.traceparent if req.trace else ""
        for image in req.images:
            waiter = Waiter(req.request_id, image.index, req.reply_to, deadline, arrived, clock, traceparent)
            if self.membership.draining:
                self._fail(waiter, ErrorKind.UNAVAILABLE, "draining: taking no new images")
                continue
            if time.time() > deadline:
                self._fail(waiter, ErrorKind.DEADLINE_EXCEEDED, "deadline passed before the image was queued")
                continue
            key = self.runner.cache_key(image.content_hash)
            queued = self.batcher.find(key) or self.preparing.find(key)
            if queued is not None:  # the same content is already on its way: share its forward
                self.metrics.cache_lookups.labels("coalesced").inc()
                self.inflight.hold(peer, req.request_id, image.index)
                queued.waiters.append(waiter)
                continue
            cached = self.cache.get(key) if self.cache.max_bytes else None
            self.metrics.cache_lookups.labels("hit" if cached else "miss").inc()
            self.metrics.cache_hit_rate.set(self.cache.hit_rate)
            if cached is not None:
                self._deliver(waiter, image.content_hash, cached, from_cache=True)
            elif image.data is None:
                misses.append(image)
            else:
                self.inflight.hold(peer, req.request_id, image.index)  # released when delivered or failed
                self._queue(image, key, waiter)
        if misses:
            self._report_misses(peer, req.request_id, misses)

    def _queue(self, image: ImageInput, key: str, waiter: Waiter) -> None:
        """To a preparing thread; inline when there is none or too many images are on their way."""
        if self.preparing.can_submit():
            self.preparing.submit(image, key, waiter)
            return
        try:
            pixels = self.preparing.prepare_inline(image)
        except Exception as e:  # noqa: BLE001 - every failure is the image's, told to its waiter
            self._prepare_failed(image, [waiter], e)
            return
        self._enqueue(image, key, [waiter], pixels)

    def _prepare_failed(self, image: ImageInput, waiters: list[Waiter], e: Exception) -> None:
        what = "image" if image.video is None else "video"
        if isinstance(e, HashMismatch):
            kind, message = ErrorKind.BAD_REQUEST, str(e)
        elif isinstance(e, (ImageError, VideoError)):
            kind, message = ErrorKind.BAD_IMAGE, f"invalid {what}: {e}"
        else:  # anything the media libraries did not anticipate, e.g. MemoryError
            log.error("[%s] %s %d: preprocessing failed", waiters[0].request_id, what, waiters[0].image_index,
                      exc_info=e)  # fmt: skip
            kind, message = ErrorKind.BAD_IMAGE, f"{what} could not be preprocessed: {type(e).__name__}: {e}"
        for waiter in waiters:
            self._fail(waiter, kind, message)

    def _enqueue(self, image: ImageInput, key: str, waiters: list[Waiter], pixels: Pixels) -> None:
        pixel_values, grid = pixels
        queued = self.batcher.queued_patches
        if queued and queued + pixel_values.shape[0] > self.cfg.max_queued_patches:  # one image always fits
            for waiter in waiters:
                self._fail(waiter, ErrorKind.OVERLOADED, f"encoder queue is full ({queued} patches waiting)")
            return
        self.batcher.add(PendingImage(key, image.content_hash, pixel_values, grid, waiters))

    def _report_misses(self, peer: bytes, request_id: str, misses: list[ImageInput]) -> None:
        self.metrics.cache_misses_reported.inc(len(misses))
        reply = CacheMiss(request_id, [im.index for im in misses], [im.content_hash for im in misses])
        try:
            self.requests.send(peer, reply, self.cfg.send_timeout_s)
        except WireError as e:
            self.metrics.send_failures.inc()
            log.warning("[%s] could not report cache misses to the router: %s", request_id, e)

    # ----- 2. collect ----------------------------------------------------------------------------
    def collect(self) -> None:
        """Prepared images to the patch queue. With nothing queued to run, first wait for those on
        their way (at most ``PREPARE_WAIT_S``): a burst that arrived together runs as one forward."""
        if len(self.preparing) and not len(self.batcher):
            self.preparing.wait(PREPARE_WAIT_S)
        for p in self.preparing.finished():
            try:
                pixels = p.result()
            except Exception as e:  # noqa: BLE001 - every failure is the image's, told to its waiters
                self._prepare_failed(p.image, p.waiters, e)
                continue
            self._enqueue(p.image, p.key, p.waiters, pixels)

    # ----- 3. schedule ---------------------------------------------------------------------------
    def schedule(self) -> list[PendingImage]:
        for waiter in self.batcher.expire(time.time()):
            self._fail(waiter, ErrorKind.DEADLINE_EXCEEDED, "deadline passed while the image was queued")
        return self.batcher.next_batch()

    # ----- 4. run --------------------------------------------------------------------------------
    def run(self, batch: list[PendingImage]) -> list[CachedEmbedding] | None:
        patches = sum(im.num_patches for im in batch)
        start = self.batch_started = time.monotonic()
        try:
            outputs = self.runner.run(batch)
        except Exception as e:  # a failed forward fails its images, never the service
            log.exception("vision forward failed for %d images", len(batch))
            for image in batch:
                for waiter in image.waiters:
                    self._fail(waiter, ErrorKind.INTERNAL, f"vision forward failed: {type(e).__name__}: {e}")
            return None
        self.metrics.forward_seconds.observe(time.monotonic() - start)
        self.metrics.forwards.inc()
        self.metrics.batch_images.observe(len(batch))
        self.metrics.batch_patches.observe(patches)
        self.metrics.batch_requests.observe(len({w.request_id for im in batch for w in im.waiters}))
        return outputs

    # ----- 5. send -------------------------------------------------------------------------------
    def send(self, batch: list[PendingImage], outputs: list[CachedEmbedding]) -> None:
        for image, output in zip(batch, outputs, strict=True):
            if self.cache.max_bytes:
                evicted = self.cache.evictions
                self.cache.put(image.key, output)
                self.metrics.cache_evictions.inc(self.cache.evictions - evicted)
                self.metrics.cache_bytes.set(self.cache.bytes)
            for waiter in image.waiters:
                self._deliver(waiter, image.content_hash, output, from_cache=False)

    def _deliver(self, waiter: Waiter, content_hash: str, out: CachedEmbedding, from_cache: bool) -> None:
        self.inflight.release(waiter.request_id, waiter.image_index)
        stamps = []
        if (
            waiter.clock is not None
        ):  # queued until its batch started (a cache hit: until now), then the forward
            c, started = waiter.clock, self.batch_started if not from_cache else time.monotonic()
            stamps.append(c.stamp(StageName.ENCODE_QUEUE, waiter.received_at, started))
            if not from_cache:
                stamps.append(c.stamp(StageName.VISION, started))
        result = ImageEmbeddingResult(
            waiter.request_id, waiter.image_index, content_hash, out.grid_thw, out.embeds, out.deepstack,
            from_cache, self.name, stamps,
        )  # fmt: skip
        try:
            self.outbox.send(waiter.reply_to, result, self.cfg.send_timeout_s)
        except WireError as e:
            self.metrics.send_failures.inc()
            log.warning(
                "[%s] image %d: result not delivered to %s: %s",
                waiter.request_id,
                waiter.image_index,
                waiter.reply_to,
                e,
            )
            return
        self.metrics.bytes_shipped.inc(out.nbytes)
        self.metrics.results.labels(str(from_cache).lower()).inc()
        self.metrics.encode_latency.observe(time.monotonic() - waiter.received_at)
        observe(self.metrics.stages, stamps)
        self.tracer.export(
            waiter.traceparent, waiter.request_id, stamps, **{"epd.image_index": waiter.image_index}
        )

    def _fail(self, waiter: Waiter, kind: ErrorKind, message: str) -> None:
        """Tell the waiter's prefill inbox that this image failed."""
        self.inflight.release(waiter.request_id, waiter.image_index)
        self.metrics.errors.labels(kind.value).inc()
        log.info("[%s] image %d: %s: %s", waiter.request_id, waiter.image_index, kind.value, message)
        error = StageError(
            waiter.request_id, waiter.image_index, kind, message[:4096], self.name, Stage.ENCODER
        )
        try:
            self.outbox.send(waiter.reply_to, error, self.cfg.send_timeout_s)
        except WireError as e:
            self.metrics.send_failures.inc()
            log.warning("[%s] error not delivered to %s: %s", waiter.request_id, waiter.reply_to, e)
