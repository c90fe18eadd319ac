"""Fixtures for model parity tests: one tiny MoE checkpoint, our model and transformers' on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shared.models.loader import load_model
from shared.multimodal.mrope import mrope_positions
from shared.multimodal.prompt import PromptBuilder
from shared.multimodal.vision_inputs import ImageProcessorConfig, preprocess_image

# Small enough to be quick, large enough that one test image must be downscaled.
MAX_PIXELS = 160_000
SPEC = dict(num_hidden_layers=3, mlp_only_layers=(2,), max_pixels=MAX_PIXELS)


def picture(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), (xx * yy) % 256], -1)
    noisy = np.clip(base + rng.integers(-60, 60, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy, "RGB")


@pytest.fixture(scope="session")
def ckpt(tiny_checkpoint) -> Path:
    return tiny_checkpoint(**SPEC)


@pytest.fixture(scope="session")
def ours(ckpt):
    return load_model(ckpt, dtype="float32")


@pytest.fixture(scope="session")
def hf(ckpt):
    from transformers import Qwen3VLMoeForConditionalGeneration

    return Qwen3VLMoeForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def processor_config(ckpt) -> ImageProcessorConfig:
    return ImageProcessorConfig.from_checkpoint(ckpt)


@pytest.fixture(scope="session")
def images(processor_config):
    """(pixel_values, grid) of pictures of several sizes: below the minimum, non-square, too big."""
    sizes = [(40, 30), (300, 180), (120, 260), (640, 480)]
    return [preprocess_image(picture(w, h, seed=i), processor_config) for i, (w, h) in enumerate(sizes)]


IMG = {"type": "image"}
CONVERSATIONS = {
    "text": [
        {"role": "system", "content": "You are a careful assistant."},
        {"role": "user", "content": "hello there, what can you do?"},
        {"role": "assistant", "content": "I can describe pictures and answer questions."},
        {"role": "user", "content": "tell me about the weather"},
    ],
    "one_image": [
        {"role": "user", "content": [IMG, {"type": "text", "text": "What is in the image?"}]},
    ],
    "three_images": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare the first"},
                IMG,
                {"type": "text", "text": "with the second"},
                IMG,
            ],
        },
        {"role": "assistant", "content": "The first is brighter."},
        {"role": "user", "content": [IMG, {"type": "text", "text": "and this one?"}]},
    ],
}
IMAGES_USED = {"text": [], "one_image": [1], "three_images": [0, 1, 3]}


@pytest.fixture(scope="session")
def prompts(ckpt, images, ours):
    """name -> (input_ids [T], positions [3, T], pixel_values, grids)."""
    builder = PromptBuilder.from_checkpoint(ckpt)
    merge = ours.config.vision.spatial_merge_size
    out = {}
    for name, messages in CONVERSATIONS.items():
        picked = [images[i] for i in IMAGES_USED[name]]
        grids = [g for _, g in picked]
        prompt = builder.build(messages, grids)
        ids = torch.tensor(prompt.input_ids)
        positions, _ = mrope_positions(ids, grids, ours.config.image_token_id, merge)
        pixels = torch.cat([p for p, _ in picked]) if picked else None
        out[name] = (ids, positions, pixels, grids)
    return out
