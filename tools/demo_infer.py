"""Greedy chat with a checkpoint through our model, and the same through transformers.

``DemoChat`` is the single-process path the services split up: preprocess the pictures, build the
prompt with the checkpoint's tokenizer and chat template, run the vision tower
(``get_image_feature``), prefill the prompt, then decode one token at a time against the KV cache
until ``<|im_end|>``. ``hf_greedy`` runs transformers' ``generate`` on the very same prompt and
pixels, which is how the evaluation and the tests check that the two agree token for token.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from shared.models.language import DeepstackInput
from shared.models.layers.attention import ContiguousAttention, SequenceKV
from shared.models.loader import load_model
from shared.models.qwen3_vl_moe import ImageFeature
from shared.multimodal.mrope import mrope_positions
from shared.multimodal.prompt import PromptBuilder
from shared.multimodal.vision_inputs import ImageProcessorConfig, preprocess_image


@dataclass
class Prepared:
    """One prompt, ready for either model."""

    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [3, T]
    pixel_values: torch.Tensor | None  # [N, C*T*P*P]
    grids: list[tuple[int, int, int]]


class DemoChat:
    def __init__(self, checkpoint_dir: str | Path, dtype: str = "float32") -> None:
        self.model = load_model(checkpoint_dir, dtype=dtype)
        self.builder = PromptBuilder.from_checkpoint(checkpoint_dir)
        self.processor = ImageProcessorConfig.from_checkpoint(checkpoint_dir)
        tok = self.builder.tokenizer
        self.stop = {tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")}

    def prepare(self, messages: list[dict[str, Any]], images: list[Image.Image]) -> Prepared:
        pre = [preprocess_image(img, self.processor) for img in images]
        grids = [g for _, g in pre]
        prompt = self.builder.build(messages, grids)
        ids = torch.tensor(prompt.input_ids)
        positions, _ = mrope_positions(
            ids, grids, self.model.config.image_token_id, self.processor.merge_size
        )
        pixels = torch.cat([p for p, _ in pre]) if pre else None
        return Prepared(ids, positions, pixels, grids)

    def features(self, prepared: Prepared) -> list[ImageFeature]:
        if prepared.pixel_values is None:
            return []
        return self.model.get_image_feature(prepared.pixel_values, prepared.grids)

    @torch.inference_mode()
    def generate(
        self, prepared: Prepared, features: list[ImageFeature] | None = None, max_new_tokens: int = 32
    ) -> list[int]:
        """Greedy tokens, the stop token included (as transformers' ``generate`` returns them)."""
        model, ids = self.model, prepared.input_ids
        features = self.features(prepared) if features is None else features
        deepstack = None
        if features:
            embeds = model.embed(ids, torch.cat([f.embeds for f in features]))
            index = (ids == model.config.image_token_id).nonzero()[:, 0]
            deepstack = DeepstackInput(index, torch.cat([f.deepstack for f in features], dim=1))
        else:
            embeds = model.embed(ids)
        cfg = model.config.text
        cache = SequenceKV(cfg.num_hidden_layers)
        scale = cfg.head_dim**-0.5
        hidden = model(embeds, prepared.positions, ContiguousAttention([cache], [len(ids)], scale), deepstack)
        delta = int(prepared.positions.max()) + 1 - len(ids)
        out = [int(model.compute_logits(hidden[-1:]).argmax(-1))]
        while out[-1] not in self.stop and len(out) < max_new_tokens:
            pos = torch.full((3, 1), len(cache) + delta, dtype=torch.long)
            hidden = model(model.embed(torch.tensor(out[-1:])), pos, ContiguousAttention([cache], [1], scale))
            out.append(int(model.compute_logits(hidden).argmax(-1)))
        return out

    def decode(self, tokens: list[int]) -> str:
        return self.builder.tokenizer.decode(tokens, skip_special_tokens=True).strip()

    def answer(self, messages: list[dict[str, Any]], images: list[Image.Image]) -> str:
        return self.decode(self.generate(self.prepare(messages, images)))


def load_hf(checkpoint_dir: str | Path) -> torch.nn.Module:
    from transformers import Qwen3VLMoeForConditionalGeneration  # deferred: heavy import

    return Qwen3VLMoeForConditionalGeneration.from_pretrained(checkpoint_dir, dtype=torch.float32).eval()


@torch.no_grad()
def hf_greedy(
    hf_model: torch.nn.Module, prepared: Prepared, image_token_id: int, max_new_tokens: int = 32
) -> list[int]:
    """transformers' greedy ``generate`` on the same prompt ids and pixels."""
    ids = prepared.input_ids
    kwargs: dict[str, Any] = {
        "input_ids": ids[None],
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
        "mm_token_type_ids": (ids == image_token_id).int()[None],
    }
    if prepared.pixel_values is not None:
        kwargs |= {"pixel_values": prepared.pixel_values, "image_grid_thw": torch.tensor(prepared.grids)}
    out = hf_model.generate(**kwargs, max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, len(ids) :].tolist()
