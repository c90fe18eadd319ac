"""The disaggregation contract: vision-only and language-only loads compose to the whole model."""

from __future__ import annotations

import pytest
import torch

from shared.models.loader import load_model
from tests.models.runner import prompt_logits

pytestmark = pytest.mark.unit


def test_split_models_give_the_whole_models_logits(ckpt, ours, prompts):
    vision = load_model(ckpt, parts={"vision"}, dtype="float32")
    language = load_model(ckpt, parts={"language"}, dtype="float32")
    assert vision.model is None and vision.lm_head is None
    assert language.visual is None
    for ids, positions, pixels, grids in prompts.values():
        features = vision.get_image_feature(pixels, grids) if grids else []
        split = prompt_logits(language, ids, positions, features)
        whole_features = ours.get_image_feature(pixels, grids) if grids else []
        whole = prompt_logits(ours, ids, positions, whole_features)
        assert torch.equal(split, whole)
