"""In-process greedy generation through our model's prefill + cached decode, for parity tests.

The engine owns real scheduling; this is the minimal loop that exercises the model's two calling
conventions (a whole prompt, then one token at a time against the cache) so that the model's
numbers can be held against transformers' ``generate``.
"""

from __future__ import annotations

import torch

from shared.models.language import DeepstackInput
from shared.models.layers.attention import ContiguousAttention, SequenceKV
from shared.models.qwen3_vl_moe import ImageFeature, Qwen3VLMoeForConditionalGeneration


def image_inputs(
    model: Qwen3VLMoeForConditionalGeneration, ids: torch.Tensor, features: list[ImageFeature]
) -> tuple[torch.Tensor, DeepstackInput | None]:
    if not features:
        return model.embed(ids), None
    embeds = torch.cat([f.embeds for f in features])
    deepstack = torch.cat([f.deepstack for f in features], dim=1)
    index = (ids == model.config.image_token_id).nonzero()[:, 0]
    return model.embed(ids, embeds), DeepstackInput(index, deepstack)


@torch.inference_mode()
def prompt_logits(model, ids, positions, features) -> torch.Tensor:
    embeds, deepstack = image_inputs(model, ids, features)
    cache = SequenceKV(model.config.text.num_hidden_layers)
    attn = ContiguousAttention([cache], [len(ids)], model.config.text.head_dim**-0.5)
    return model.compute_logits(model(embeds, positions, attn, deepstack))


@torch.inference_mode()
def greedy(model, ids, positions, features, max_new_tokens: int) -> list[int]:
    """Prefill the prompt, then decode one token per step against the cache."""
    scale = model.config.text.head_dim**-0.5
    embeds, deepstack = image_inputs(model, ids, features)
    cache = SequenceKV(model.config.text.num_hidden_layers)
    hidden = model(embeds, positions, ContiguousAttention([cache], [len(ids)], scale), deepstack)
    delta = int(positions.max()) + 1 - len(ids)
    out = [int(model.compute_logits(hidden[-1:]).argmax(-1))]
    while len(out) < max_new_tokens:
        pos = torch.full((3, 1), len(cache) + delta, dtype=torch.long)
        step = model.embed(torch.tensor(out[-1:]))
        hidden = model(step, pos, ContiguousAttention([cache], [1], scale))
        out.append(int(model.compute_logits(hidden).argmax(-1)))
    return out
