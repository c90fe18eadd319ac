"""A request as the orchestrator sees it (``Job``, its ``LoadedImage`` images and videos), what it
tells the HTTP side (``Event``), and the wire messages one attempt of a job sends
(``prefill_request``, ``encode_request``).

A job remembers the tokens it streamed to the client (``Job.streamed``). An attempt after some
were streamed (a migration: the worker that held the request died) runs the prompt followed by
those tokens, text positions after the prompt's layout, with ``max_tokens`` less what was streamed
and the sampler's draws counted from there (``SamplingParams.draw_offset``): the engine samples the
token that comes next, as the lost worker would have.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from router.timing import RequestTiming
from shared.engine import SamplingParams
from shared.multimodal.mrope import GridTHW, MRopeLayout, mrope_layout
from shared.multimodal.video import VideoPlan
from shared.transfer import sampling_to_wire
from shared.wire import EncodeRequest, ImageInput
from shared.wire.messages import (
    ErrorKind,
    FinishReason,
    ImagePlacement,
    MRopeSegment,
    PrefillRequest,
    VideoSpec,
)


@dataclass(frozen=True)
class VisionTokens:
    """The checkpoint's placeholder ids and merge size: what turns grids into prompt layouts."""

    image_token_id: int
    video_token_id: int
    merge_size: int


@dataclass(frozen=True)
class LoadedImage:
    """One image or video of a request, loaded and checked, in prompt order among the request's
    images and videos."""

    data: bytes  # the image file; a video's file, or its still frames concatenated
    hash: str  # the encoder's cache key: SHA-256 of an image; a video's key covers its sampling
    grid: GridTHW  # patches (t, h, w); a video's t counts temporal groups
    video: VideoSpec | None = None  # set for a video: the frames the encoder decodes
    spans: tuple[tuple[int, int], ...] = ()  # [start, end) of its token runs (a video: one per group)

    @property
    def num_tokens(self) -> int:
        return sum(end - start for start, end in self.spans)


def video_spec(plan: VideoPlan, frame_lengths: list[int] | None = None) -> VideoSpec:
    """A ``VideoPlan`` on the wire (``frame_lengths``: a video given as still frames)."""
    return VideoSpec(
        "frames" if frame_lengths else "container", list(frame_lengths or []), list(plan.indices),
        plan.height, plan.width, plan.grid_thw, list(plan.timestamps), plan.source_fps,
    )  # fmt: skip


def prompt_layout(
    prompt_ids: list[int], items: list[LoadedImage], tokens: VisionTokens
) -> MRopeLayout | None:
    """The MRoPE layout of a prompt with these images and videos (None: text only)."""
    if not items:
        return None
    return mrope_layout(
        prompt_ids, [im.grid for im in items if im.video is None], tokens.image_token_id, tokens.merge_size,
        video_grid_thws=[im.grid for im in items if im.video is not None], video_token_id=tokens.video_token_id,
    )  # fmt: skip


@dataclass
class Event:
    """Tokens (with logprobs, None where not asked) and, at the end, a finish reason or an error.

    ``top`` is empty, or one list of (token id, logprob), best first, per token in ``tokens``;
    ``finish`` is None while the request goes on."""

    tokens: list[tuple[int, float | None]] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    finish: FinishReason | None = None
    error: ErrorKind | None = None
    message: str = ""


@dataclass
class Job:
    rid: str  # the client-visible request id; wire ids derive from it
    prompt_ids: list[int]
    images: list[LoadedImage]
    params: SamplingParams
    deadline: float  # time.monotonic()
    sink: Callable[[Event], None]  # thread-safe: hands an event to the HTTP side
    timing: RequestTiming = field(default_factory=RequestTiming.untraced)
    submitted: float = field(default_factory=time.monotonic)
    streamed: list[int] = field(default_factory=list)  # token ids sent to the client so far

    def resumable(self, tokens: VisionTokens) -> bool:
        """Whether an attempt can continue after what was streamed: tokens remain to sample and
        none streamed is a vision placeholder (a prompt cannot hold one without its features)."""
        placeholders = (tokens.image_token_id, tokens.video_token_id)
        return len(self.streamed) < self.params.max_tokens and not any(
            t in placeholders for t in self.streamed
        )


def prefill_request(
    job: Job, wire_id: str, tokens: VisionTokens, decode_kv: str, reply_to: str
) -> PrefillRequest:
    trace = job.timing.trace()
    layout = prompt_layout(job.prompt_ids, job.images, tokens)
    segments = [
        MRopeSegment(s.start, s.length, s.position, s.grid) for s in (layout.segments if layout else ())
    ]
    done = len(job.streamed)
    params = job.params
    if done:  # a migration: the streamed tokens end the prompt, as text after it
        t = len(job.prompt_ids)
        if layout is not None:
            segments.append(MRopeSegment(t, done, t + layout.delta, None))
        params = replace(params, max_tokens=params.max_tokens - done, draw_offset=params.draw_offset + done)
    return PrefillRequest(
        request_id=wire_id,
        prompt_token_ids=[*job.prompt_ids, *job.streamed],
        layout=segments,
        mrope_delta=layout.delta if layout else 0,
        images=[
            ImagePlacement(
                i, im.hash, im.spans[0][0], im.num_tokens, [s for s, _ in im.spans] if im.video else []
            )
            for i, im in enumerate(job.images)
        ],
        sampling=sampling_to_wire(params),
        decode_address=decode_kv,
        reply_to=reply_to,
        deadline=trace.clock + max(0.1, job.deadline - time.monotonic()),
        trace=trace,
    )


def encode_request(job: Job, wire_id: str, indexes: list[int], inbox: str, with_bytes: bool) -> EncodeRequest:
    """Images ``indexes`` of ``job`` for one encoder; without their bytes when it caches them."""
    images = [
        ImageInput(i, job.images[i].hash, job.images[i].data if with_bytes else None, job.images[i].video)
        for i in indexes
    ]
    trace = job.timing.trace()
    deadline = trace.clock + max(0.1, job.deadline - time.monotonic())
    return EncodeRequest(wire_id, images, inbox, deadline, trace)
