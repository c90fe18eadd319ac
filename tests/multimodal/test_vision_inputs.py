"""Our preprocessing against transformers' Qwen2VLImageProcessorPil: bit-identical patches and grids."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

from shared.multimodal.image import decode_image
from shared.multimodal.vision_inputs import (
    ImageProcessorConfig,
    grid_thw_for_size,
    num_image_tokens,
    preprocess_image,
    smart_resize,
)
from tests.multimodal.conftest import encode, noise_image

pytestmark = pytest.mark.unit

QWEN3_VL = ImageProcessorConfig()  # published Qwen3-VL settings
SMALL_BUDGET = ImageProcessorConfig(min_pixels=32 * 32 * 4, max_pixels=32 * 32 * 24)  # forces downscaling


def hf_processor(cfg: ImageProcessorConfig) -> Qwen2VLImageProcessorPil:
    return Qwen2VLImageProcessorPil(**cfg.to_hf_kwargs())


CASES = [
    # (name, width, height, mode, format, save kwargs, config)
    ("non-square rgb png", 300, 170, "RGB", "PNG", {}, QWEN3_VL),
    ("below min pixels", 40, 25, "RGB", "PNG", {}, QWEN3_VL),
    ("downscaled", 333, 211, "RGB", "PNG", {}, SMALL_BUDGET),
    ("tall downscaled jpeg", 90, 410, "RGB", "JPEG", {"quality": 85}, SMALL_BUDGET),
    ("rgba", 130, 70, "RGBA", "PNG", {}, SMALL_BUDGET),
    ("la", 64, 96, "LA", "PNG", {}, SMALL_BUDGET),
    ("palette", 150, 90, "P", "PNG", {}, SMALL_BUDGET),
    ("palette with transparency", 150, 90, "P", "PNG", {"transparency": 7}, SMALL_BUDGET),
    ("grayscale", 120, 200, "L", "PNG", {}, SMALL_BUDGET),
    ("16-bit grayscale", 77, 55, "I;16", "PNG", {}, SMALL_BUDGET),
    ("bilevel", 64, 64, "1", "PNG", {}, SMALL_BUDGET),
    ("gif", 140, 100, "P", "GIF", {}, SMALL_BUDGET),
    ("webp lossy rgba", 160, 120, "RGBA", "WEBP", {"quality": 70}, SMALL_BUDGET),
    ("webp lossless", 96, 64, "RGB", "WEBP", {"lossless": True}, SMALL_BUDGET),
    ("jpeg", 200, 150, "RGB", "JPEG", {"quality": 90}, SMALL_BUDGET),
    ("cmyk jpeg", 100, 80, "CMYK", "JPEG", {}, SMALL_BUDGET),
    ("exact multiple, no resize needed", 128, 64, "RGB", "PNG", {}, SMALL_BUDGET),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_transformers_bit_for_bit(case) -> None:
    name, width, height, mode, fmt, save_kwargs, cfg = case
    data = encode(noise_image(width, height, mode, seed=len(name)), fmt, **save_kwargs)

    ours, grid = preprocess_image(decode_image(data), cfg)
    # transformers gets the file as PIL opens it, so its own RGB conversion is exercised too.
    ref = hf_processor(cfg)(images=[Image.open(io.BytesIO(data))], return_tensors="pt")

    assert tuple(ref["image_grid_thw"][0].tolist()) == grid
    assert ours.dtype == ref["pixel_values"].dtype == torch.float32
    assert ours.shape == ref["pixel_values"].shape
    assert torch.equal(ours, ref["pixel_values"])
    assert grid == grid_thw_for_size(height, width, cfg)
    assert num_image_tokens(grid, cfg.merge_size) * cfg.merge_size**2 == ours.shape[0]
    print(f"{name}: {width}x{height} {mode} {fmt} -> grid {grid}, pixel_values {tuple(ours.shape)}")


def test_several_images_concatenate_like_transformers() -> None:
    datas = [encode(noise_image(w, h, seed=w), "PNG") for w, h in ((70, 50), (33, 120), (64, 64))]
    ours = [preprocess_image(decode_image(d), SMALL_BUDGET) for d in datas]
    ref = hf_processor(SMALL_BUDGET)(images=[Image.open(io.BytesIO(d)) for d in datas], return_tensors="pt")
    assert torch.equal(torch.cat([v for v, _ in ours]), ref["pixel_values"])
    assert [g for _, g in ours] == [tuple(g) for g in ref["image_grid_thw"].tolist()]


def test_without_rescale_or_normalize() -> None:
    cfg = ImageProcessorConfig(min_pixels=4096, max_pixels=16384, do_rescale=False, do_normalize=False)
    data = encode(noise_image(50, 40), "PNG")
    ours, _ = preprocess_image(decode_image(data), cfg)
    ref = hf_processor(cfg)(images=[Image.open(io.BytesIO(data))], return_tensors="pt")
    assert torch.equal(ours, ref["pixel_values"])


@pytest.mark.parametrize(
    "size",
    [(1, 1), (31, 33), (32, 32), (48, 48), (100, 7), (1080, 1920), (4000, 3000), (5000, 25), (16384, 16384)],
)
def test_smart_resize_matches(size: tuple[int, int]) -> None:
    h, w = size
    for lo, hi in ((65536, 16777216), (1024, 4096 * 3), (3136, 12845056)):
        assert smart_resize(h, w, 32, lo, hi) == hf_smart_resize(h, w, 32, lo, hi)


def test_smart_resize_rejects_extreme_aspect() -> None:
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2100)


def test_config_from_published_preprocessor_config(tmp_path: Path) -> None:
    published = {
        "size": {"longest_edge": 16777216, "shortest_edge": 65536},
        "patch_size": 16,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "processor_class": "Qwen3VLProcessor",
        "image_processor_type": "Qwen2VLImageProcessorFast",
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(published))
    cfg = ImageProcessorConfig.from_checkpoint(tmp_path)
    assert cfg == ImageProcessorConfig()
    assert cfg.extra["processor_class"] == "Qwen3VLProcessor"
    assert ImageProcessorConfig.from_checkpoint(tmp_path / "missing") == ImageProcessorConfig()


def test_config_legacy_pixel_keys_win_over_size() -> None:
    cfg = ImageProcessorConfig.from_dict(
        {"size": {"shortest_edge": 10, "longest_edge": 20}, "min_pixels": 3136, "max_pixels": 12845056}
    )
    assert (cfg.min_pixels, cfg.max_pixels) == (3136, 12845056)
    hf = Qwen2VLImageProcessorPil(
        size={"shortest_edge": 10, "longest_edge": 20}, min_pixels=3136, max_pixels=12845056
    )
    assert (hf.size["shortest_edge"], hf.size["longest_edge"]) == (cfg.min_pixels, cfg.max_pixels)


def test_fingerprint_is_stable_and_sensitive() -> None:
    a, b = ImageProcessorConfig(), ImageProcessorConfig(extra={"note": 1})
    assert a.fingerprint() == b.fingerprint() == ImageProcessorConfig.from_dict({}).fingerprint()
    assert a.fingerprint() != ImageProcessorConfig(max_pixels=1 << 20).fingerprint()
    assert a.cache_key("abc").startswith("abc:")


@pytest.mark.parametrize(
    "cfg",
    [
        ImageProcessorConfig(do_resize=False),
        ImageProcessorConfig(
            do_resize=False,
            image_mean=(0.48145466, 0.4578275, 0.40821073),  # CLIP statistics: uneven per channel
            image_std=(0.26862954, 0.26130258, 0.27577711),
        ),
        ImageProcessorConfig(do_resize=False, do_rescale=False),
    ],
)
def test_every_level_of_every_channel(cfg: ImageProcessorConfig) -> None:
    x = np.arange(256, dtype=np.uint8)
    row = np.stack([x, 255 - x, x * 7], -1)  # [256, 3]: every level in every channel (x * 7 wraps)
    img = Image.fromarray(np.repeat(row[None], 64, axis=0), "RGB")  # 256 x 64, no resize needed
    ours, _ = preprocess_image(img, cfg)
    ref = hf_processor(cfg)(images=[img], return_tensors="pt")
    assert torch.equal(ours, ref["pixel_values"])
