"""Colocated serving: the whole model and one engine inside the router's process, behind the
``Orchestrator``'s interface (``start``, ``submit``, ``abort``, ``snapshot``, ``stop``).

This is the setup users would otherwise run (one process holding the vision tower, the language
model and the KV cache, like ``vllm serve``). It is a real serving path so that benchmarks can
compare the disaggregated cluster with it behind the same HTTP API, tokenizer and engine.

Owns one background thread, the only one that touches the model, the engine (``shared.engine``)
and the vision stage (``colocated_vision.py``). The HTTP side talks to it through a bounded queue
of commands (``Submit``, ``Abort``, ``Snapshot``) and gets ``Event``s back through each job's
thread-safe ``sink``.

Request life cycle (one loop turn: receive, expire, encode, admit, step, send):

1. ``submit`` takes an admission slot (``max_inflight``) and queues the job (503 when full).
2. receive: the job's images are taken from the cache or preprocessed and queued (bad: 400).
3. encode: one vision batch across jobs; a job whose images are all encoded is ready.
4. admit: a ready job becomes an engine ``Request`` (MRoPE layout, embeddings, deepstack); one
   the engine refuses (e.g. longer than the KV pool) gets an error.
5. step: one engine step (chunked prefill and decode of every running request).
6. send: each sampled token goes to its job's sink; a finish reason ends the job.
7. end: finish, error, deadline or ``abort`` (client gone, stop string): the engine and the vision
   stage forget the request (its KV blocks are freed) and its slot is released. An exception in
   a step fails the requests in the engine (``internal``) and the loop goes on.
"""

from __future__ import annotations

import enum
import logging
import queue
import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from router.backend import Abort, Backend, Snapshot, Submit
from router.colocated_vision import VisionStage
from router.config import RouterConfig
from router.jobs import Event, Job, VisionTokens, prompt_layout
from router.metrics import RouterMetrics
from shared.engine import Engine, Request, TokenOutput
from shared.engine.guided import Guides
from shared.engine.request import vision_inputs
from shared.models.loader import load_model
from shared.multimodal.image import ImageError
from shared.timeline import StageName
from shared.vision.cache import CachedEmbedding
from shared.vision.runner import VisionRunner
from shared.wire.messages import ErrorKind, FinishReason

log = logging.getLogger("router.colocated")
IDLE_WAIT_S = 0.05  # how long an idle loop blocks on the command queue
MAX_COMMANDS_PER_TURN = 256


class JobState(enum.StrEnum):
    ENCODING = "encoding"  # images queued for the vision stage
    READY = "ready"  # every image encoded; waiting for the engine to admit it
    RUNNING = "running"  # in the engine


@dataclass(eq=False)
class Live:
    job: Job
    state: JobState = JobState.ENCODING
    features: list[CachedEmbedding] = field(default_factory=list)  # set when READY, dropped when RUNNING
    submitted: float = field(default_factory=time.monotonic)
    first: float = 0.0
    last: float = 0.0
    tokens: int = 0
    ready: float = 0.0  # monotonic: every image encoded (the timeline's marks)
    started: float = 0.0  # its first prefill chunk's step began


class ColocatedBackend(Backend):
    colocated = True

    def __init__(
        self, engine: Engine, vision: VisionStage, metrics: RouterMetrics, *, tokens: VisionTokens,
        max_inflight: int, torch_threads: int = 0,
    ) -> None:  # fmt: skip
        super().__init__(metrics, max_inflight, "colocated-engine")
        self.engine, self.vision = engine, vision
        self.tokens, self.torch_threads = tokens, torch_threads
        self.live: dict[str, Live] = {}  # by request id
        self._next_gauges = 0.0
        self.steps, self.step_seconds, self.step_tokens = 0, 0.0, 0  # engine steps that ran, for /debug

    def ready(self, now: float) -> dict[str, bool]:
        """Readiness by stage, as ``Workers.ready`` reports it: here one stage, the engine thread."""
        return {"engine": self.started.is_set() and self.thread.is_alive()}

    # ----- the thread -------------------------------------------------------------------------
    def _run(self) -> None:
        if self.torch_threads > 0:  # the intra-op pool size is set per thread
            torch.set_num_threads(self.torch_threads)
        self.started.set()
        log.info("colocated engine serving (%d KV blocks)", self.engine.blocks.num_blocks)
        with torch.inference_mode():
            while not self.stopping.is_set():
                try:
                    self._turn()
                except Exception:  # last resort: a bug in one turn must not take the server down
                    log.exception("unexpected error in the colocated loop; continuing")

    def _turn(self) -> None:
        busy = self.engine.has_unfinished() or len(self.vision) > 0
        self._receive(0.0 if busy else IDLE_WAIT_S)
        now = time.monotonic()
        self._expire(now)
        self._encode()
        self._admit()
        if self.engine.has_unfinished():
            self._step()
        if now >= self._next_gauges:
            self._gauges()
            self._next_gauges = now + 0.05

    # ----- 1. receive -------------------------------------------------------------------------
    def _receive(self, timeout: float) -> None:
        for i in range(MAX_COMMANDS_PER_TURN):
            try:
                command = (
                    self.commands.get(timeout=timeout) if i == 0 and timeout else self.commands.get_nowait()
                )
            except queue.Empty:
                return
            match command:
                case Submit(job):
                    self._new(job)
                case Abort(rid, reason):
                    if (live := self.live.get(rid)) is not None:
                        self._end(live, abort=reason)
                case Snapshot(future):
                    future.set_result(self._snapshot())

    def _new(self, job: Job) -> None:
        if job.rid in self.live:
            job.sink(Event(error=ErrorKind.BAD_REQUEST, message=f"request id {job.rid} is already in use"))
            self.slots.release()
            return
        live = self.live[job.rid] = Live(job)
        job.timing.stamp(StageName.ADMISSION, job.submitted, live.submitted)
        try:
            images = self.vision.add(job.rid, job.images)
        except ImageError as e:
            self._end(live, event=Event(error=ErrorKind.BAD_IMAGE, message=str(e)))
            return
        if images.done:
            self._ready(live, [f for f in images.features if f is not None])

    def _expire(self, now: float) -> None:
        for live in [v for v in self.live.values() if now > v.job.deadline]:
            event = Event(error=ErrorKind.DEADLINE_EXCEEDED, message="request timed out")
            self._end(live, abort="deadline", event=event)

    # ----- 2. encode, admit -------------------------------------------------------------------
    def _encode(self) -> None:
        if not len(self.vision):
            return
        out = self.vision.run()
        for rid, why in out.failed.items():
            if (live := self.live.get(rid)) is not None:
                self._end(live, event=Event(error=ErrorKind.INTERNAL, message=why))
        for job in out.done:
            if (live := self.live.get(job.rid)) is not None:
                self._ready(live, [f for f in job.features if f is not None])

    def _ready(self, live: Live, features: list[CachedEmbedding]) -> None:
        live.state, live.features, live.ready = JobState.READY, features, time.monotonic()
        if features:  # queued for and run through the vision stage
            live.job.timing.stamp(StageName.VISION, live.submitted, live.ready)

    def _admit(self) -> None:
        for live in [v for v in self.live.values() if v.state is JobState.READY]:
            try:
                if not self.engine.guide_ready(live.job.params.guide):
                    continue  # compiling in the background: admitted on a later turn
                request = engine_request(live.job, live.features, self.tokens, self.engine.pool.dtype)
                self.engine.add_request(request)
            except ValueError as e:  # e.g. longer than the whole KV pool
                self._end(live, event=Event(error=ErrorKind.BAD_REQUEST, message=str(e)))
                continue
            except Exception as e:  # a bug must fail this request, not retry it every turn
                log.exception("could not admit a request", extra={"request_id": live.job.rid})
                message = f"admission failed: {type(e).__name__}: {e}"
                self._end(live, event=Event(error=ErrorKind.INTERNAL, message=message))
                continue
            live.state, live.features = JobState.RUNNING, []

    # ----- 3. step, send ----------------------------------------------------------------------
    def _step(self) -> None:
        start, began = time.perf_counter(), time.monotonic()
        try:
            outputs = self.engine.step()
        except Exception as e:
            log.exception("engine step failed; failing the requests in the engine")
            message = f"engine step failed: {type(e).__name__}: {e}"
            for live in [v for v in self.live.values() if v.state is JobState.RUNNING]:
                self._end(live, abort="failed", event=Event(error=ErrorKind.INTERNAL, message=message))
            return
        self.steps, self.step_tokens = self.steps + 1, self.step_tokens + len(outputs)
        self.step_seconds += time.perf_counter() - start
        for live in self.live.values():
            if live.state is JobState.RUNNING and not live.started and self._scheduled(live.job.rid):
                live.started = began
        self._send(outputs)

    def _scheduled(self, rid: str) -> bool:
        """Whether the engine has run (part of) the request's prompt: it holds blocks, or is done."""
        try:
            return bool(self.engine.kv_progress(rid)[0])
        except KeyError:
            return True

    def _send(self, outputs: list[TokenOutput]) -> None:
        now = time.monotonic()
        for out in outputs:
            live = self.live.get(out.request_id)
            if live is None:
                continue
            # No request here is prefill_only, so the engine's reason is one the wire knows.
            finish = None if out.finish_reason is None else FinishReason(out.finish_reason.value)
            t = live.job.timing
            if live.tokens == 0:
                t.stamp(StageName.PREFILL_QUEUE, live.ready, live.started or live.ready)
                t.stamp(StageName.PREFILL, live.started or live.ready, now)
            if finish is not None and live.tokens > 0:
                t.stamp(StageName.DECODE, live.first, now)
            self.metrics.token(live, now)
            top = [list(out.top_logprobs)] if out.top_logprobs is not None else []
            live.job.sink(Event([(out.token_id, out.logprob)], top=top, finish=finish))
            if finish is not None:  # the engine has freed the request already
                self._end(live)

    def _end(self, live: Live, abort: str = "", event: Event | None = None) -> None:
        """Forget a job everywhere (engine, vision stage), tell its sink ``event``, free its slot."""
        rid = live.job.rid
        if abort:
            self.metrics.aborts.labels(abort).inc()
        self.engine.abort(rid)  # False when the engine holds nothing for it
        self.vision.cancel(rid)
        self.live.pop(rid, None)
        self.metrics.e2e.observe(time.monotonic() - live.submitted)
        if event is not None:
            live.job.sink(event)
        self.slots.release()

    # ----- observability ----------------------------------------------------------------------
    def _gauges(self) -> None:
        states = [v.state for v in self.live.values()]
        waiting = sum(v.state is not JobState.RUNNING or v.tokens == 0 for v in self.live.values())
        self.metrics.queue.labels("admission").set(self.commands.qsize())
        self.metrics.queue.labels("encoder").set(states.count(JobState.ENCODING))
        self.metrics.queue.labels("prefill").set(waiting - states.count(JobState.ENCODING))
        self.metrics.queue.labels("decode").set(len(states) - waiting)
        self.metrics.inflight.set(len(states))

    def _snapshot(self) -> dict[str, Any]:
        sched, blocks = self.engine.scheduler, self.engine.blocks
        return {
            "mode": "colocated",
            "requests": [
                {"id": rid, "state": v.state.value, "tokens": v.tokens} for rid, v in self.live.items()
            ],
            "engine": {
                "running": len(sched.running),
                "waiting": len(sched.waiting),
                "free_blocks": self.engine.num_free_blocks,
                "total_blocks": blocks.num_blocks,
                "steps": self.steps,
                "step_seconds": self.step_seconds,
                "step_tokens": self.step_tokens,
            },
            "vision": {
                "queued_images": len(self.vision),
                "queued_patches": self.vision.batcher.queued_patches,
                "cache_bytes": self.vision.cache.bytes,
                "forwards": self.vision.runner.forwards,
            },
        }


def engine_request(
    job: Job, features: list[CachedEmbedding], tokens: VisionTokens, dtype: torch.dtype
) -> Request:
    """The engine's request for a job whose images and videos are encoded. The MRoPE layout comes
    from the grids the embeddings were computed on; one that disagrees with the prompt raises
    ValueError."""
    if not features:
        return Request(job.rid, list(job.prompt_ids), job.params)
    items = [replace(im, grid=f.grid_thw) for im, f in zip(job.images, features, strict=True)]
    layout = prompt_layout(job.prompt_ids, items, tokens)
    assert layout is not None
    images = [
        inp
        for f, im in zip(features, job.images, strict=True)
        for inp in vision_inputs(f.embeds.to(dtype), f.deepstack.to(dtype), im.hash, list(im.spans))
    ]
    return Request(
        job.rid, list(job.prompt_ids), job.params, positions=layout.positions(), mrope_delta=layout.delta,
        images=images,
    )  # fmt: skip


def load_colocated(cfg: RouterConfig, metrics: RouterMetrics, tokens: VisionTokens) -> ColocatedBackend:
    """Load the whole model once (vision tower and language model) for the engine and the vision stage."""
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    log.info("loading the whole model from %s (%s, %s)", cfg.model, cfg.device, cfg.dtype)
    model = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    engine = Engine(model, cfg.engine, Guides.from_checkpoint(cfg.model, model.config.eos_token_ids[0]))
    runner = VisionRunner(cfg.model, cfg.device, cfg.dtype, model=model)
    vision = VisionStage(runner, cfg.batch_patches, cfg.image_cache_bytes)
    return ColocatedBackend(
        engine, vision, metrics, tokens=tokens, max_inflight=cfg.max_inflight, torch_threads=cfg.torch_threads,
    )  # fmt: skip
