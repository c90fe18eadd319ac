"""A request as the orchestrator sees it (``Job``), what it tells the HTTP side (``Event``), and
the wire messages one attempt of a job sends (``prefill_request``, ``encode_requests``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from router.timing import RequestTiming
from shared.engine import SamplingParams
from shared.multimodal.mrope import GridTHW, mrope_layout
from shared.transfer import sampling_to_wire
from shared.wire import EncodeRequest, ImageInput
from shared.wire.messages import ErrorKind, FinishReason, ImagePlacement, MRopeSegment, PrefillRequest


@dataclass(frozen=True)
class LoadedImage:
    data: bytes
    hash: str
    grid: GridTHW


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


def prefill_request(
    job: Job, wire_id: str, image_token_id: int, merge_size: int, decode_kv: str, reply_to: str
) -> PrefillRequest:
    trace = job.timing.trace()
    grids = [im.grid for im in job.images]
    layout = mrope_layout(job.prompt_ids, grids, image_token_id, merge_size) if grids else None
    segments = layout.segments if layout else []
    image_segs = [s for s in segments if s.grid is not None]
    return PrefillRequest(
        request_id=wire_id,
        prompt_token_ids=list(job.prompt_ids),
        layout=[MRopeSegment(s.start, s.length, s.position, s.grid) for s in segments],
        mrope_delta=layout.delta if layout else 0,
        images=[
            ImagePlacement(i, im.hash, s.start, s.length)
            for i, (im, s) in enumerate(zip(job.images, image_segs, strict=True))
        ],
        sampling=sampling_to_wire(job.params),
        decode_address=decode_kv,
        reply_to=reply_to,
        deadline=trace.clock + max(0.1, job.deadline - time.monotonic()),
        trace=trace,
    )


def encode_request(job: Job, wire_id: str, indexes: list[int], inbox: str, with_bytes: bool) -> EncodeRequest:
    """Images ``indexes`` of ``job`` for one encoder; without their bytes when it caches them."""
    images = [ImageInput(i, job.images[i].hash, job.images[i].data if with_bytes else None) for i in indexes]
    trace = job.timing.trace()
    deadline = trace.clock + max(0.1, job.deadline - time.monotonic())
    return EncodeRequest(wire_id, images, inbox, deadline, trace)
