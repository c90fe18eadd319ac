"""A ``PrefillRequest`` and its image (and video) embeddings -> the engine's ``Request``."""

from __future__ import annotations

import torch

from shared.engine import Request
from shared.engine.request import vision_inputs
from shared.multimodal.mrope import MRopeLayout, Segment
from shared.transfer import sampling_from_wire
from shared.wire import ImageEmbeddingResult
from shared.wire.messages import PrefillRequest


def layout_of(msg: PrefillRequest) -> MRopeLayout | None:
    if not msg.layout:
        return None
    segments = tuple(Segment(s.start, s.length, s.position, s.grid) for s in msg.layout)
    return MRopeLayout(segments, len(msg.prompt_token_ids), msg.mrope_delta)


def build_request(msg: PrefillRequest, images: list[ImageEmbeddingResult], dtype: torch.dtype) -> Request:
    """Raises ValueError when the embeddings do not fit the placements (the engine checks the rest)."""
    inputs = []
    for place, result in zip(msg.images, images, strict=True):
        if result.content_hash != place.content_hash:
            raise ValueError(
                f"image {place.index}: embeddings of another image arrived (content hash differs)"
            )
        if result.num_tokens != place.num_tokens:
            raise ValueError(
                f"image {place.index}: {result.num_tokens} embedding rows for {place.num_tokens} tokens"
            )
        inputs += vision_inputs(
            result.embeds.to(dtype), result.deepstack.to(dtype), place.content_hash, place.runs()
        )
    layout = layout_of(msg)
    return Request(
        msg.request_id,
        list(msg.prompt_token_ids),
        sampling_from_wire(msg.sampling),
        positions=None if layout is None else layout.positions(),
        mrope_delta=msg.mrope_delta,
        images=inputs,
        prefill_only=True,
    )
