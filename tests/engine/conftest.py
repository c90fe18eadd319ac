"""Fixtures for the engine tests: one tiny MoE checkpoint, our language and vision halves, transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shared.models.loader import load_model

# The same spec as the model parity tests, so that one checkpoint serves both in a session.
SPEC = dict(num_hidden_layers=3, mlp_only_layers=(2,), max_pixels=160_000)


@pytest.fixture(scope="session")
def ckpt(tiny_checkpoint) -> Path:
    return tiny_checkpoint(**SPEC)


@pytest.fixture(scope="session")
def lm(ckpt):
    return load_model(ckpt, parts={"language"}, dtype="float32")


@pytest.fixture(scope="session")
def vision(ckpt):
    return load_model(ckpt, parts={"vision"}, dtype="float32")


@pytest.fixture(scope="session")
def hf(ckpt):
    from transformers import Qwen3VLMoeForConditionalGeneration

    return Qwen3VLMoeForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
