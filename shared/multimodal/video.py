"""Video to vision-tower inputs: sample frames, size them, normalise, cut into patches.

Owns Qwen3-VL video preprocessing as transformers' ``Qwen3VLVideoProcessor`` and
``Qwen3VLProcessor`` define it, split in two so each service does only its part:

    router:  probe_video / probe_frames (video_io) -> plan_video: indices, size, grid, timestamps
    encoder: decode_video / decode_frame_list (video_io) -> preprocess_video: pixel values

The plan is computed from container facts alone, so the router knows the token count before any
frame is decoded. Sampling, the resize rule (with the temporal factor and the optional per-frame
cap), the fused rescale+normalise arithmetic, the padding of the last temporal group and the patch
order are transformers'; frames are resized with PIL (as our images are), where transformers
uses torchvision.

Shapes: P = patch_size, T = temporal_patch_size, M = merge_size, C = 3 channels, F = sampled
frames; a plan of grid (gt, gh, gw) gives gt * gh * gw patch rows of C * T * P * P values and
gt * gh * gw / M^2 language-model tokens, gh * gw / M^2 per timestamp.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from shared.multimodal.video_io import (
    VideoError,
    VideoInfo,
    VideoLimits,
    decode_frame_list,
    decode_video,
    frame_list_hash,
    probe_frames,
    probe_video,
)
from shared.multimodal.vision_inputs import PatchSettings, pixel_settings

__all__ = [
    "VideoError",
    "VideoInfo",
    "VideoLimits",
    "VideoPlan",
    "VideoProcessorConfig",
    "decode_frame_list",
    "decode_video",
    "frame_list_hash",
    "plan_video",
    "preprocess_video",
    "probe_frames",
    "probe_video",
    "video_cache_key",
    "video_smart_resize",
]

GridTHW = tuple[int, int, int]


@dataclass(frozen=True)
class VideoProcessorConfig(PatchSettings):
    """Video preprocessing settings; the defaults are ``Qwen3VLVideoProcessor``'s class defaults."""

    min_pixels: int = 128 * 32 * 32  # size.shortest_edge: all frames together, not per frame
    max_pixels: int = 768 * 32 * 32  # size.longest_edge
    fps: float = 2.0  # frames sampled per second of video
    min_frames: int = 4
    max_frames: int = 768
    do_sample_frames: bool = True
    cap_pixels_per_frame: bool = False  # qwen-vl-utils' per-frame budget; unset means off
    max_video_tokens: int = 768  # per-frame token ceiling of that cap

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VideoProcessorConfig:
        """Build from the JSON of a ``video_preprocessor_config.json`` (``size`` holds
        ``shortest_edge``/``longest_edge``; a null value keeps the default, as in transformers)."""
        defaults = cls()
        size = data.get("size") or {}

        def get(key: str) -> Any:
            value = data.get(key)
            return getattr(defaults, key) if value is None else value

        known = {"size", *(f for f in cls.__dataclass_fields__ if f != "extra")}
        return cls(
            **pixel_settings(data, defaults),
            min_pixels=int(size.get("shortest_edge") or defaults.min_pixels),
            max_pixels=int(size.get("longest_edge") or defaults.max_pixels),
            fps=float(get("fps")),
            min_frames=int(get("min_frames")),
            max_frames=int(get("max_frames")),
            do_sample_frames=bool(get("do_sample_frames")),
            cap_pixels_per_frame=bool(get("cap_pixels_per_frame")),
            max_video_tokens=int(get("max_video_tokens")),
            extra={k: v for k, v in data.items() if k not in known},
        )

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: str | Path) -> VideoProcessorConfig:
        """Read ``video_preprocessor_config.json``; a checkpoint without one gets the defaults."""
        path = Path(checkpoint_dir) / "video_preprocessor_config.json"
        if not path.is_file():
            return cls()
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))

    def to_hf_kwargs(self) -> dict[str, Any]:
        """Keyword arguments that configure transformers' ``Qwen3VLVideoProcessor`` identically."""
        settings = asdict(self)
        settings.pop("extra")
        settings["size"] = {
            "shortest_edge": settings.pop("min_pixels"),
            "longest_edge": settings.pop("max_pixels"),
        }
        settings["image_mean"], settings["image_std"] = list(self.image_mean), list(self.image_std)
        return settings

    def fingerprint(self) -> str:
        """Stable short digest of every setting that changes sampling, the grid or pixel values."""
        settings = asdict(self)
        settings.pop("extra")
        blob = json.dumps(settings, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class VideoPlan:
    """Which frames to decode, what size to bring them to, and what the model will see."""

    indices: tuple[int, ...]  # sampled frame indices, in order (may repeat when upsampling)
    height: int  # resized frame size
    width: int
    grid_thw: GridTHW  # (temporal groups after padding, height / P, width / P)
    timestamps: tuple[float, ...]  # seconds, one per temporal group
    source_fps: float


def video_smart_resize(
    num_frames: int,
    height: int,
    width: int,
    temporal_factor: int = 2,
    factor: int = 32,
    min_pixels: int = 128 * 32 * 32,
    max_pixels: int = 768 * 32 * 32,
) -> tuple[int, int]:
    """Target (height, width) of every frame: multiples of ``factor``, the pixels of all frames
    together within [min_pixels, max_pixels], aspect ratio kept (transformers' video rule).
    """
    if num_frames < temporal_factor:
        raise VideoError(f"a video needs at least {temporal_factor} frames, got {num_frames}")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise VideoError(f"video frames are {width}x{height}; the aspect ratio must be at most 200")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((num_frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _sample_indices(
    info: VideoInfo, cfg: VideoProcessorConfig, fps: float | None, num_frames: int | None
) -> list[int]:
    """``Qwen3VLVideoProcessor.sample_frames``, with a bound on requested frame counts."""
    total = info.total_frames
    if num_frames is None:
        target = cfg.fps if fps is None else fps
        if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target < math.inf:
            raise VideoError(f"the sampling fps must be a positive number, got {target!r}")
        num_frames = int(total / info.fps * target)
        num_frames = min(max(num_frames, cfg.min_frames), cfg.max_frames, total)
    elif (
        isinstance(num_frames, bool)
        or not isinstance(num_frames, int)
        or not 1 <= num_frames <= cfg.max_frames
    ):
        raise VideoError(f"num_frames must be an integer from 1 to {cfg.max_frames}, got {num_frames!r}")
    return [int(i) for i in np.linspace(0, total - 1, num_frames).round().astype(int)]


def _timestamps(indices: list[int], video_fps: float, group: int) -> tuple[float, ...]:
    """``Qwen3VLProcessor._calculate_timestamps``: the mean time of each temporal group's ends."""
    padded = indices + [indices[-1]] * (-len(indices) % group)
    seconds = [idx / video_fps for idx in padded]
    return tuple((seconds[i] + seconds[i + group - 1]) / 2 for i in range(0, len(seconds), group))


def plan_video(
    info: VideoInfo, cfg: VideoProcessorConfig, *, fps: float | None = None, num_frames: int | None = None
) -> VideoPlan:
    """Sampled indices, resized size, grid and timestamps of a probed video (no pixels needed).

    ``fps`` (default ``cfg.fps``) and ``num_frames`` are exclusive, as in transformers; both are
    ignored when ``cfg.do_sample_frames`` is off (every frame is used). At most ``cfg.max_frames``
    frames are used. A video of fewer frames than one temporal patch is padded by repeating its
    last frame (transformers refuses it). Frames given as stills are sampled like any video, at
    their declared rate (as transformers samples decoded frames that come with metadata).
    """
    if fps is not None and num_frames is not None:
        raise VideoError("fps and num_frames are mutually exclusive; give at most one")
    if info.total_frames < 1 or info.fps <= 0:
        raise VideoError("the video has no frames")
    if cfg.do_sample_frames:
        indices = _sample_indices(info, cfg, fps, num_frames)
    elif info.total_frames > cfg.max_frames:
        raise VideoError(f"the video has {info.total_frames} frames; at most {cfg.max_frames} can be used")
    else:
        indices = list(range(info.total_frames))

    t, p, tp = len(indices), cfg.patch_size, cfg.temporal_patch_size
    frames_resized = max(t, tp)  # what transformers would see had the frames been repeated first
    if cfg.do_resize:
        max_pixels = cfg.max_pixels
        if cfg.cap_pixels_per_frame:
            frame_cap = cfg.max_video_tokens * cfg.factor * cfg.factor
            per_frame = max(min(frame_cap, cfg.max_pixels // frames_resized), int(cfg.min_pixels * 1.05))
            max_pixels = per_frame * frames_resized
        height, width = video_smart_resize(
            frames_resized, info.height, info.width, tp, cfg.factor, cfg.min_pixels, max_pixels
        )
    else:
        height, width = info.height, info.width
        if height % cfg.factor or width % cfg.factor:
            raise VideoError(
                f"frames of {width}x{height} are not multiples of {cfg.factor} and resizing is off"
            )
    grid = ((t + -t % tp) // tp, height // p, width // p)
    return VideoPlan(tuple(indices), height, width, grid, _timestamps(indices, info.fps, tp), info.fps)


@lru_cache(maxsize=16)
def _value_table(cfg: VideoProcessorConfig) -> np.ndarray:
    """[C, 256] float32: what each uint8 level becomes, by transformers' fused video arithmetic.

    The video processor folds the rescale into the mean and std (mean / rescale_factor in float32)
    and normalises the float32 levels with them; doing the same ops on the 256 levels once makes a
    lookup bit-identical to the per-pixel computation.
    """
    levels = torch.arange(256, dtype=torch.uint8).expand(3, 256)  # [C, 256]
    if cfg.do_normalize:
        mean = torch.tensor(cfg.image_mean)
        std = torch.tensor(cfg.image_std)
        if cfg.do_rescale:
            mean, std = mean * (1.0 / cfg.rescale_factor), std * (1.0 / cfg.rescale_factor)
        values = (levels.to(torch.float32) - mean[:, None]) / std[:, None]
    elif cfg.do_rescale:
        values = levels * cfg.rescale_factor
    else:
        values = levels
    return values.to(torch.float32).contiguous().numpy()


def _resize_frames(frames: np.ndarray, height: int, width: int, resample: int) -> np.ndarray:
    """[F, H, W, 3] uint8 -> [F, height, width, 3] uint8 with PIL; frames already that size are kept."""
    if frames.shape[1:3] == (height, width):
        return frames
    out = np.empty((frames.shape[0], height, width, 3), np.uint8)
    for i, frame in enumerate(frames):
        out[i] = np.asarray(Image.fromarray(frame).resize((width, height), resample=resample))
    return out


def _patchify(values: np.ndarray, cfg: VideoProcessorConfig) -> torch.Tensor:
    """[F, H, W, C] float32, F a multiple of T -> [gt * gh * gw, C * T * P * P] in transformers' order."""
    p, m, tp = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    f, h, w, c = values.shape
    gt, gh, gw = f // tp, h // p, w // p
    x = torch.from_numpy(values)
    x = x.reshape(gt, tp, gh // m, m, p, gw // m, m, p, c)  # [gt, T, gh/M, M, P, gw/M, M, P, C]
    x = x.permute(0, 2, 5, 3, 6, 8, 1, 4, 7)  # [gt, gh/M, gw/M, M, M, C, T, P, P]
    return x.reshape(gt * gh * gw, c * tp * p * p)


def preprocess_video(frames: np.ndarray, plan: VideoPlan, cfg: VideoProcessorConfig) -> torch.Tensor:
    """Sampled frames [F, H, W, 3] uint8 -> pixel_values [gt * gh * gw, C * T * P * P] float32."""
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
        raise VideoError(f"expected [F, H, W, 3] uint8 frames, got {frames.dtype} {tuple(frames.shape)}")
    if frames.shape[0] != len(plan.indices):
        raise VideoError(f"the plan samples {len(plan.indices)} frames, {frames.shape[0]} were given")
    if cfg.do_resize:
        frames = _resize_frames(frames, plan.height, plan.width, cfg.resample)
    elif frames.shape[1:3] != (plan.height, plan.width):
        raise VideoError(
            f"frames are {frames.shape[2]}x{frames.shape[1]}, the plan says {plan.width}x{plan.height}"
        )
    if pad := -frames.shape[0] % cfg.temporal_patch_size:  # the last group repeats the last frame
        frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)])
    values = _value_table(cfg)[np.arange(3), frames]  # [F, H, W, C] float32
    return _patchify(values, cfg)


def video_cache_key(content_hash: str, plan: VideoPlan, cfg: VideoProcessorConfig) -> str:
    """Cache key of one video's encoder output: its content, how it was sampled and sized, the settings."""
    blob = json.dumps(
        [content_hash, list(plan.indices), plan.height, plan.width, list(plan.grid_thw), cfg.fingerprint()],
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()
