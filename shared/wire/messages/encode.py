"""router -> encoder, encoder -> router and encoder -> prefill: the image (and video) flow.

* router -> encoder (DEALER -> ROUTER): ``EncodeRequest``
* encoder -> router (ROUTER -> DEALER, replies): ``CacheMiss``; ``StageError`` for a request that
  failed validation (its prefill address is not trustworthy, so the error goes back to the sender)
* encoder -> prefill (PUSH -> PULL, the address named in the request): ``ImageEmbeddingResult``,
  or ``StageError`` where that result would have gone
"""

from __future__ import annotations

import torch

from shared.wire.messages.common import (
    ADDRESS,
    CONTENT_HASH,
    FLOAT_DTYPES,
    MAX_GRID,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_INDEX,
    MAX_IMAGES_PER_REQUEST,
    MAX_VIDEO_FRAMES,
    MAX_VIDEO_SOURCE_FRAMES,
    REQUEST_ID,
    StageStamp,
    TraceContext,
)
from shared.wire.schema import message, rule, struct


# ----- router -> encoder -----------------------------------------------------------------------------
@struct
class VideoSpec:
    """How the router sampled a video (``shared.multimodal.video.VideoPlan``): the encoder decodes
    exactly these frames at this size, so the prompt it planned and the embeddings agree."""

    source: str = rule(pattern=r"container|frames")  # one encoded file, or a list of still images
    frame_lengths: list[int] = rule(
        ge=1, le=MAX_IMAGE_BYTES, max_len=MAX_VIDEO_FRAMES
    )  # frames: bytes of each
    indices: list[int] = rule(ge=0, le=MAX_VIDEO_SOURCE_FRAMES, min_len=1, max_len=MAX_VIDEO_FRAMES)
    height: int = rule(ge=1, le=MAX_GRID)  # resized frame size, pixels
    width: int = rule(ge=1, le=MAX_GRID)
    grid_thw: tuple[int, int, int] = rule(ge=1, le=MAX_GRID)  # (temporal groups, h, w) in patches
    timestamps: list[float] = rule(ge=0, le=1e7, min_len=1, max_len=MAX_VIDEO_FRAMES)  # per group, seconds
    source_fps: float = rule(ge=0, le=1e4)

    def validate(self) -> None:
        if self.source == "container" and self.frame_lengths:
            raise ValueError("a container video has no frame_lengths")
        if self.source == "frames" and not self.frame_lengths:
            raise ValueError("a video of still frames needs frame_lengths")
        if list(self.indices) != sorted(self.indices):
            raise ValueError("video frame indices must be non-decreasing")
        if len(self.timestamps) != self.grid_thw[0]:
            raise ValueError(f"{len(self.timestamps)} timestamps for {self.grid_thw[0]} temporal groups")


@struct
class ImageInput:
    """One image or video of a request (``video`` set: ``data`` is the video, ``content_hash`` its
    key: ``shared.multimodal.video.video_cache_key`` of the bytes and the sampling)."""

    index: int = rule(ge=0, le=MAX_IMAGE_INDEX)  # position of the image in its request
    content_hash: str = rule(pattern=CONTENT_HASH)
    data: bytes | None = rule(max_len=MAX_IMAGE_BYTES, default=None)  # None: "you have it cached"
    video: VideoSpec | None = None


@message("encode_request")
class EncodeRequest:
    """Encode some (or all) images of one request and push each result to ``reply_to``.

    One request's images may be spread over several encoders; each result carries its index.
    """

    request_id: str = rule(pattern=REQUEST_ID)
    images: list[ImageInput] = rule(min_len=1, max_len=MAX_IMAGES_PER_REQUEST)
    reply_to: str = rule(pattern=ADDRESS)  # the prefill worker's embedding inbox
    deadline: float = rule(ge=0)
    trace: TraceContext | None = None  # None: not from a router (stamps use this machine's clock)

    def validate(self) -> None:
        indexes = [im.index for im in self.images]
        if len(set(indexes)) != len(indexes):
            raise ValueError(f"image indexes {indexes} are not unique")


# ----- encoder -> router -----------------------------------------------------------------------------
@message("cache_miss")
class CacheMiss:
    """These images were sent without bytes but are not in this encoder's cache: send them again
    with their bytes (the other images of the request are being encoded)."""

    request_id: str = rule(pattern=REQUEST_ID)
    image_indexes: list[int] = rule(ge=0, le=MAX_IMAGE_INDEX, min_len=1, max_len=MAX_IMAGES_PER_REQUEST)
    content_hashes: list[str] = rule(pattern=CONTENT_HASH, min_len=1, max_len=MAX_IMAGES_PER_REQUEST)

    def validate(self) -> None:
        if len(self.image_indexes) != len(self.content_hashes):
            raise ValueError("image_indexes and content_hashes differ in length")


# ----- encoder -> prefill ----------------------------------------------------------------------------
@message("image_embedding")
class ImageEmbeddingResult:
    """The vision tower's output for one image: what prefill splices in at its image tokens."""

    request_id: str = rule(pattern=REQUEST_ID)
    image_index: int = rule(ge=0, le=MAX_IMAGE_INDEX)
    content_hash: str = rule(pattern=CONTENT_HASH)
    grid_thw: tuple[int, int, int] = rule(ge=1, le=MAX_GRID)
    embeds: torch.Tensor = rule(dtypes=FLOAT_DTYPES, ndim=2)  # [n, H]
    deepstack: torch.Tensor = rule(dtypes=FLOAT_DTYPES, ndim=3)  # [S, n, H]
    cached: bool = False  # served from the encoder's cache (informational)
    source: str = rule(max_len=256, default="")
    stamps: list[StageStamp] = rule(max_len=8, default_factory=list)  # the encoder's stages

    def validate(self) -> None:
        n, h = self.embeds.shape
        if tuple(self.deepstack.shape[1:]) != (n, h):
            raise ValueError(f"deepstack {list(self.deepstack.shape)} does not match embeds {[n, h]}")
        if self.deepstack.dtype != self.embeds.dtype:
            raise ValueError(
                f"deepstack dtype {self.deepstack.dtype} differs from embeds {self.embeds.dtype}"
            )
        t, gh, gw = self.grid_thw
        if n == 0 or (t * gh * gw) % n:
            raise ValueError(f"{n} embedding rows cannot come from a {t}x{gh}x{gw} patch grid")

    @property
    def num_tokens(self) -> int:
        return self.embeds.shape[0]

    @property
    def nbytes(self) -> int:
        return self.embeds.nbytes + self.deepstack.nbytes
