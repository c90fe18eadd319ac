"""A ``video_url`` content part to a checked, sampled video: what the prompt and the encoder need.

Two shapes, both as vLLM accepts them: a video file (a data URL or an http(s) URL under the same
fetch guard as images, ``router/images.py``), or still frames as one data URL
``data:video/jpeg;base64,<frame 1>,<frame 2>,...`` (any of our image types, the same size each),
which stand for ``video_url.fps`` frames per second (default 2, the rate Qwen3-VL samples at, so
every frame is kept). The router only demuxes a file (no decoding beyond its first frame): that
gives its frame count, rate and size, from which ``plan_video`` chooses the frames, their size and
the timestamps exactly as Qwen3-VL's processor does. The encoder decodes those frames later. Every
failure is a 400 ``APIError`` naming the part.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx

from router.images import FetchLimits, b64_payload, load_image_url, split_data_url
from router.jobs import LoadedImage, video_spec
from router.protocol import APIError, bad_request
from shared.multimodal.image import image_hash
from shared.multimodal.prompt import VideoSlots
from shared.multimodal.video import (
    VideoError,
    VideoLimits,
    VideoProcessorConfig,
    frame_list_hash,
    plan_video,
    probe_frames,
    probe_video,
    video_cache_key,
)

DEFAULT_FRAMES_FPS = 2.0


@dataclass(frozen=True)
class VideoRules:
    """What the router accepts: how many videos, how they are fetched, how long they may be."""

    max_videos: int = 2
    fetch: FetchLimits = FetchLimits(max_bytes=32 << 20, kind="video")
    limits: VideoLimits = VideoLimits()


@dataclass(frozen=True)
class Sampling:
    """A request's ``mm_processor_kwargs``: frames per second or frames in all (None: defaults)."""

    fps: float | None = None
    num_frames: int | None = None


async def load_video(
    url: str, frames_fps: float | None, param: str, rules: VideoRules, cfg: VideoProcessorConfig,
    sampling: Sampling, client: httpx.AsyncClient,
) -> tuple[LoadedImage, VideoSlots]:  # fmt: skip
    """Fetch, probe and plan one video part: the item the encoder gets and the prompt's slots."""
    frames = _frame_list(url, param, rules.fetch)
    if frames is None:
        if frames_fps is not None:
            raise bad_request("video_url.fps is only for a list of frames", param, "invalid_video")
        data = await load_image_url(url, param, rules.fetch, client)
    try:
        if frames is not None:
            info = await asyncio.to_thread(
                probe_frames, frames, frames_fps or DEFAULT_FRAMES_FPS, rules.limits
            )
        else:
            info = await asyncio.to_thread(probe_video, data, rules.limits)
        plan = plan_video(info, cfg, fps=sampling.fps, num_frames=sampling.num_frames)
    except VideoError as e:
        raise bad_request(f"invalid video: {e}", param, "invalid_video") from None
    if frames is not None:
        data, raw, lengths = b"".join(frames), frame_list_hash(frames), [len(f) for f in frames]
    else:
        raw, lengths = image_hash(data), []
    key = video_cache_key(raw, plan, cfg)
    item = LoadedImage(data, key, plan.grid_thw, video_spec(plan, lengths))
    return item, VideoSlots(plan.grid_thw, plan.timestamps)


def _frame_list(url: str, param: str, fetch: FetchLimits) -> list[bytes] | None:
    """The frames of a ``data:video/jpeg;base64,<f1>,<f2>,...`` URL (None: not a frame list)."""
    if not url.startswith("data:"):
        return None
    mime, payload = split_data_url(url, param, fetch)
    if mime not in ("video/jpeg", "video/jpg", "video/png", "video/webp", "image/jpeg", "image/png"):
        return None
    parts = payload.split(",") if payload.strip() else []  # no frames: probe_frames says so
    if len(parts) > 4096:
        raise bad_request(f"a frame list has at most 4096 frames, got {len(parts)}", param, "invalid_video")
    frames = [b64_payload(p, param, fetch) for p in parts]
    if sum(len(f) for f in frames) > fetch.max_bytes:
        raise bad_request(f"video is larger than {fetch.max_bytes} bytes", param, "video_too_large")
    return frames


def too_many(n: int, rules: VideoRules) -> APIError | None:
    if n <= rules.max_videos:
        return None
    if rules.max_videos == 0:
        return bad_request("this server does not accept video", "messages", "video_not_allowed")
    return bad_request(
        f"at most {rules.max_videos} videos per request, got {n}", "messages", "too_many_videos"
    )
