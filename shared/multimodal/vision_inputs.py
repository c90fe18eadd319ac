"""RGB picture to vision-tower inputs: resize, normalise, cut into patches.

Owns the Qwen3-VL image preprocessing the encoder runs before the vision tower, and the token
arithmetic the router needs to size a prompt. The output matches transformers'
``Qwen2VLImageProcessorPil`` bit for bit: same resize (PIL, bicubic by default), rescale in float64
then cast to float32, normalise in float32, one picture duplicated over the temporal patch, rows in
spatial-merge-block order. The configuration is read from a checkpoint's
``preprocessor_config.json``.

Shapes: P = patch_size, T = temporal_patch_size, M = merge_size, C = 3 channels;
an image of grid (1, gh, gw) gives gh * gw patch rows of C * T * P * P values and
gh * gw / M^2 language-model tokens.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from shared.multimodal.image import to_rgb

GridTHW = tuple[int, int, int]

# PIL.Image.Resampling.BICUBIC; the value transformers' Qwen2-VL processors use.
BICUBIC = 3


@dataclass(frozen=True)
class PatchSettings:
    """What image and video preprocessing share: patching, the pixel budget, resampling, rescale
    and normalisation; the defaults are those of the published Qwen3-VL image processor."""

    patch_size: int = 16
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 65536  # size.shortest_edge in the checkpoint's config
    max_pixels: int = 16777216  # size.longest_edge
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    rescale_factor: float = 1 / 255
    resample: int = BICUBIC
    do_resize: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def factor(self) -> int:
        """Side length, in pixels, of one merged token: resized sides are multiples of it."""
        return self.patch_size * self.merge_size


@dataclass(frozen=True)
class ImageProcessorConfig(PatchSettings):
    """Image preprocessing settings (``preprocessor_config.json``)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageProcessorConfig:
        """Build from the JSON of a ``preprocessor_config.json``.

        ``size`` may hold ``shortest_edge``/``longest_edge`` (Qwen3-VL) or ``min_pixels``/
        ``max_pixels`` (older Qwen2-VL files); top-level ``min_pixels``/``max_pixels`` win over
        ``size``, as in transformers.
        """
        defaults = cls()
        size = data.get("size") or {}
        min_pixels = size.get("shortest_edge", size.get("min_pixels", defaults.min_pixels))
        max_pixels = size.get("longest_edge", size.get("max_pixels", defaults.max_pixels))
        if data.get("min_pixels") is not None:
            min_pixels = data["min_pixels"]
        if data.get("max_pixels") is not None:
            max_pixels = data["max_pixels"]

        known = {
            "size",
            "min_pixels",
            "max_pixels",
            *(f for f in cls.__dataclass_fields__ if f != "extra"),
        }
        return cls(
            **pixel_settings(data, defaults),
            min_pixels=int(min_pixels),
            max_pixels=int(max_pixels),
            extra={k: v for k, v in data.items() if k not in known},
        )

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: str | Path) -> ImageProcessorConfig:
        """Read ``preprocessor_config.json``; a checkpoint without one gets the Qwen3-VL defaults."""
        path = Path(checkpoint_dir) / "preprocessor_config.json"
        if not path.is_file():
            return cls()
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))

    def to_hf_kwargs(self) -> dict[str, Any]:
        """Keyword arguments that configure transformers' Qwen2-VL image processor identically."""
        return {
            "patch_size": self.patch_size,
            "temporal_patch_size": self.temporal_patch_size,
            "merge_size": self.merge_size,
            "size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "rescale_factor": self.rescale_factor,
            "resample": self.resample,
            "do_resize": self.do_resize,
            "do_rescale": self.do_rescale,
            "do_normalize": self.do_normalize,
        }

    def fingerprint(self) -> str:
        """Stable short digest of every setting that changes pixel values or the grid."""
        settings = asdict(self)
        settings.pop("extra")
        blob = json.dumps(settings, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def cache_key(self, content_hash: str) -> str:
        """Cache key of one image's encoder output: its content hash plus these settings."""
        return f"{content_hash}:{self.fingerprint()}"


PIXEL_SETTINGS = (
    "patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std", "rescale_factor",
    "resample", "do_resize", "do_rescale", "do_normalize",
)  # fmt: skip


def pixel_settings(data: dict[str, Any], defaults: Any) -> dict[str, Any]:
    """The settings image and video processor configs share, from a processor JSON: patching,
    resampling, rescale and normalisation (a missing or null value keeps ``defaults``'), typed."""

    def get(key: str) -> Any:
        value = data.get(key)
        return getattr(defaults, key) if value is None else value

    def triple(value: Any) -> tuple[float, ...]:
        return tuple(float(v) for v in value) if isinstance(value, (list, tuple)) else (float(value),) * 3

    out: dict[str, Any] = {}
    for key in PIXEL_SETTINGS:
        value = get(key)
        if key in ("image_mean", "image_std"):
            out[key] = triple(value)
        elif key == "rescale_factor":
            out[key] = float(value)
        elif key.startswith("do_"):
            out[key] = bool(value)
        else:
            out[key] = int(value)
    return out


def smart_resize(
    height: int, width: int, factor: int = 32, min_pixels: int = 65536, max_pixels: int = 16777216
) -> tuple[int, int]:
    """Target (height, width): multiples of ``factor``, area within [min_pixels, max_pixels],
    aspect ratio kept as closely as possible (the Qwen-VL rule, including Python's round-half-even).
    """
    if min(height, width) <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be at most 200, got {max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def resized_size(height: int, width: int, cfg: ImageProcessorConfig) -> tuple[int, int]:
    """The (height, width) an image of this size is resized to before patching."""
    if not cfg.do_resize:
        return height, width
    return smart_resize(height, width, cfg.factor, cfg.min_pixels, cfg.max_pixels)


def grid_thw_for_size(height: int, width: int, cfg: ImageProcessorConfig) -> GridTHW:
    """Patch grid (1, gh, gw) of an image from its size alone (no pixels needed)."""
    h, w = resized_size(height, width, cfg)
    if h % cfg.factor or w % cfg.factor:
        raise ValueError(f"image side {h}x{w} is not a multiple of patch_size * merge_size = {cfg.factor}")
    return (1, h // cfg.patch_size, w // cfg.patch_size)


def num_image_tokens(grid_thw: GridTHW | list[int] | torch.Tensor, merge_size: int) -> int:
    """Language-model tokens (``<|image_pad|>`` copies) of one image: t * h * w / merge_size^2."""
    t, h, w = (int(v) for v in grid_thw)
    return t * h * w // (merge_size * merge_size)


@lru_cache(maxsize=16)
def _value_table(cfg: ImageProcessorConfig) -> np.ndarray:
    """[C, 256] float32: the value every uint8 level of each channel ends up as.

    Built with exactly transformers' arithmetic (rescale in float64 then cast to float32, normalise
    in float32), so looking values up is bit-identical to computing them per pixel, at a quarter of
    the memory of the float64 intermediate.
    """
    levels = np.arange(256, dtype=np.uint8)[:, None].repeat(3, axis=1)  # [256, C]
    table: np.ndarray = levels
    if cfg.do_rescale:
        table = (table.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
    if cfg.do_normalize:
        table = table.astype(np.float32, copy=False)
        table = (table - np.asarray(cfg.image_mean, np.float32)) / np.asarray(cfg.image_std, np.float32)
    return np.ascontiguousarray(table.astype(np.float32, copy=False).T)


def _patchify(chw: np.ndarray, cfg: ImageProcessorConfig) -> torch.Tensor:
    """[C, H, W] float32 -> [gh * gw, C * T * P * P], rows in spatial-merge-block order."""
    p, m, t = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    c, h, w = chw.shape
    gh, gw = h // p, w // p
    x = torch.from_numpy(np.ascontiguousarray(chw, dtype=np.float32))
    x = x.reshape(c, gh // m, m, p, gw // m, m, p)  # [C, gh/M, M, P, gw/M, M, P]
    x = x.permute(1, 4, 2, 5, 0, 3, 6)  # [gh/M, gw/M, M, M, C, P, P]
    # A still picture fills every temporal slot of the patch with the same frame.
    x = x.unsqueeze(5).expand(*x.shape[:5], t, p, p)  # [gh/M, gw/M, M, M, C, T, P, P]
    return x.reshape(gh * gw, c * t * p * p)


def preprocess_image(img: Image.Image, cfg: ImageProcessorConfig) -> tuple[torch.Tensor, GridTHW]:
    """One picture to (pixel_values [gh * gw, C * T * P * P] float32, grid_thw (1, gh, gw))."""
    if img.mode != "RGB":
        img = to_rgb(img)
    width, height = img.size
    h, w = resized_size(height, width, cfg)
    if cfg.do_resize:
        img = img.resize((w, h), resample=cfg.resample)  # same size: PIL returns an exact copy
    if h % cfg.factor or w % cfg.factor:
        raise ValueError(f"image side {h}x{w} is not a multiple of patch_size * merge_size = {cfg.factor}")

    pixels = np.asarray(img)  # [H, W, C] uint8
    values = _value_table(cfg)[np.arange(3), pixels]  # [H, W, C] float32
    return _patchify(np.moveaxis(values, -1, 0), cfg), (1, h // cfg.patch_size, w // cfg.patch_size)
