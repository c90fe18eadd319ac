"""Qwen3-VL-MoE: the top class that owns the vision tower, the base language model and lm_head.

There is deliberately no intermediate "LLM model" class (see the seed note): the top class holds
``visual`` and owns ``get_image_feature``; ``model`` is the plain base language model, which
already knows how to add deepstack embeddings. Either half may be left out: the encoder service
builds ``parts={"vision"}``, prefill and decode build ``parts={"language"}``, and tests build both.
The dense Qwen3-VL is the same class with no experts in its config.

Shape legend: T tokens, H hidden, V vocabulary, N image tokens, S deepstack levels.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from shared.models.config import ModelConfig
from shared.models.language import DeepstackInput, Qwen3MoeModel
from shared.models.layers.attention import AttentionBackend
from shared.models.vision import Qwen3VisionTransformer

PARTS = frozenset({"vision", "language"})


@dataclass
class ImageFeature:
    """What the vision tower produces for one image: the encoder's output, prefill's input."""

    embeds: torch.Tensor  # [n, H]: one row per image token
    deepstack: torch.Tensor  # [S, n, H]

    @property
    def num_tokens(self) -> int:
        return self.embeds.shape[0]


class Qwen3VLMoeForConditionalGeneration(nn.Module):
    def __init__(self, config: ModelConfig, parts: Iterable[str] = PARTS) -> None:
        super().__init__()
        parts = frozenset(parts)
        if not parts or parts - PARTS:
            raise ValueError(f"parts must be a non-empty subset of {sorted(PARTS)}, got {sorted(parts)}")
        self.config = config
        self.parts = parts
        self.visual = Qwen3VisionTransformer(config.vision) if "vision" in parts else None
        self.model = Qwen3MoeModel(config.text) if "language" in parts else None
        self.lm_head: nn.Linear | None = None
        if self.model is not None:
            self.lm_head = nn.Linear(config.text.hidden_size, config.text.vocab_size, bias=False)
            if config.tie_word_embeddings:
                self.lm_head.weight = self.model.embed_tokens.weight

    # ----- vision half -------------------------------------------------------------------------
    @torch.inference_mode()
    def get_image_feature(
        self, pixel_values: torch.Tensor, grid_thw: list[tuple[int, int, int]]
    ) -> list[ImageFeature]:
        """Encode the images whose patches are concatenated in ``pixel_values``, in order."""
        if self.visual is None:
            raise RuntimeError("this model was built without its vision tower")
        merged, deepstack = self.visual(pixel_values.to(self.visual.dtype), grid_thw)
        unit = self.config.vision.merge_unit
        sizes = [t * h * w // unit for t, h, w in grid_thw]
        return [
            ImageFeature(e, d)
            for e, d in zip(merged.split(sizes), deepstack.split(sizes, dim=1), strict=True)
        ]

    def get_video_feature(
        self, pixel_values_videos: torch.Tensor, grid_thw: list[tuple[int, int, int]]
    ) -> list[ImageFeature]:
        """Encode videos: the same tower, each temporal patch attended on its own (t > 1 in the grid).

        One feature per video with all its temporal groups' rows, in order; images and videos may
        also go through ``get_image_feature`` together, as the encoder batches them."""
        return self.get_image_feature(pixel_values_videos, grid_thw)

    # ----- language half -----------------------------------------------------------------------
    def _language(self) -> Qwen3MoeModel:
        if self.model is None:
            raise RuntimeError("this model was built without its language model")
        return self.model

    def embed(self, input_ids: torch.Tensor, image_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with image-pad tokens replaced by image embeddings, in order: [T, H]."""
        embeds = self._language().embed_tokens(input_ids)
        is_image = input_ids == self.config.image_token_id
        count = int(is_image.sum())
        given = 0 if image_embeds is None else image_embeds.shape[0]
        if count != given:
            raise ValueError(f"{count} image tokens in the prompt but {given} image embeddings given")
        if image_embeds is not None and count:
            embeds = embeds.clone()
            embeds[is_image] = image_embeds.to(embeds.dtype)
        return embeds

    def forward(
        self,
        inputs_embeds: torch.Tensor,  # [T, H]
        positions: torch.Tensor,  # [3, T]
        attn: AttentionBackend,
        deepstack: DeepstackInput | None = None,
    ) -> torch.Tensor:
        """Final hidden states [T, H] of a packed batch; ``compute_logits`` turns rows into logits."""
        return self._language()(inputs_embeds, positions, attn, deepstack)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        assert self.lm_head is not None
        return self.lm_head(hidden).float()  # [T, V]


class Qwen3VLForConditionalGeneration(Qwen3VLMoeForConditionalGeneration):
    """The dense sibling: identical structure, plain MLPs (the config has no experts)."""
