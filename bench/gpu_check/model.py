"""Section 2: the language model at a preset's widths with random weights, and its sizes."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.gpu_check.common import (
    FULL_LAYERS,
    Preset,
    Report,
    si,
)
from shared.models.config import ModelConfig, parse_config
from shared.models.qwen3_vl_moe import Qwen3VLMoeForConditionalGeneration


def model_config(p: Preset, layers: int) -> ModelConfig:
    """A config.json as the published Qwen3-VL-30B-A3B one, at the preset's widths."""
    return parse_config(
        {
            "model_type": "qwen3_vl_moe",
            "dtype": "bfloat16",
            "tie_word_embeddings": False,
            "text_config": {
                "vocab_size": p.vocab, "hidden_size": p.hidden, "num_hidden_layers": layers,
                "num_attention_heads": p.heads, "num_key_value_heads": p.kv_heads, "head_dim": p.head_dim,
                "intermediate_size": 6144, "num_experts": p.experts, "num_experts_per_tok": p.top_k,
                "moe_intermediate_size": p.expert_ffn, "rms_norm_eps": 1e-6, "rope_theta": 5_000_000.0,
                "rope_scaling": {"rope_type": "default", "mrope_section": list(p.mrope), "mrope_interleaved": True},
                "max_position_embeddings": 262144, "eos_token_id": 151645,
            },
            "vision_config": {  # the published tower's sizes; never built (language part only)
                "depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16,
                "out_hidden_size": p.hidden, "num_position_embeddings": 2304,
                "deepstack_visual_indexes": [8, 16, 24],
            },
        }
    )  # fmt: skip


def random_language_model(
    config: ModelConfig, dtype: torch.dtype, device: torch.device, seed: int
) -> Qwen3VLMoeForConditionalGeneration:
    """The language half with random weights: built on meta, allocated once in ``dtype`` on ``device``."""
    with torch.device("meta"):
        model = Qwen3VLMoeForConditionalGeneration(config, parts={"language"})
    model = model.to(dtype).to_empty(device=device)
    g = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=g)
    return model.eval()


@dataclass(frozen=True)
class Sizes:
    """Parameter counts of one decoder layer and of the parts outside the layers."""

    layer_dense: int  # attention, router, norms
    layer_matmul: int  # of those, the weights a token multiplies (attention and router)
    expert: int  # one expert's gate, up and down
    experts: int
    top_k: int
    embed: int
    head: int  # lm_head and the final norm
    hidden: int
    vocab: int
    kv_per_token_layer: int  # K and V elements of one token in one layer

    @classmethod
    def of(cls, model: Qwen3VLMoeForConditionalGeneration) -> Sizes:
        lm, text = model.model, model.config.text
        assert lm is not None and model.lm_head is not None
        params = dict(lm.layers[0].named_parameters())
        dense = {n: p.numel() for n, p in params.items() if ".experts." not in n}
        experts = sum(p.numel() for n, p in params.items() if ".experts." in n)
        return cls(
            layer_dense=sum(dense.values()),
            layer_matmul=sum(n for name, n in dense.items() if params[name].dim() == 2),
            expert=experts // text.num_experts,
            experts=text.num_experts,
            top_k=text.num_experts_per_tok,
            embed=lm.embed_tokens.weight.numel(),
            head=model.lm_head.weight.numel() + lm.norm.weight.numel(),
            hidden=text.hidden_size,
            vocab=text.vocab_size,
            kv_per_token_layer=2 * text.num_key_value_heads * text.head_dim,
        )

    @property
    def layer(self) -> int:
        return self.layer_dense + self.experts * self.expert

    @property
    def layer_active(self) -> int:
        return self.layer_dense + self.top_k * self.expert

    def total(self, layers: int) -> int:
        return self.embed + self.head + layers * self.layer

    def experts_hit(self, batch: int) -> float:
        """Expected distinct experts a batch of independent tokens routes to, per layer."""
        return self.experts * (1 - (1 - self.top_k / self.experts) ** batch)

    def decode_bytes(self, layers: int, batch: int, kv_tokens: int, elem: int) -> float:
        """Bytes a decode step reads: weights it uses and the KV of ``kv_tokens`` (all contexts)."""
        per_layer = self.layer_dense + self.experts_hit(batch) * self.expert
        weights = self.head + batch * self.hidden + layers * per_layer
        return elem * (weights + layers * kv_tokens * self.kv_per_token_layer)

    def prefill_flops(self, layers: int, tokens: int, heads: int, head_dim: int) -> float:
        """One prompt of ``tokens``: GEMMs of the active weights, causal attention, lm_head on one row."""
        matmul = layers * (self.layer_matmul + self.top_k * self.expert)
        attention = 4 * layers * heads * head_dim * tokens**2 / 2
        return 2 * matmul * tokens + attention + 2 * self.vocab * self.hidden


def describe_model(rep: Report, sizes: Sizes, layers: int, dtype: torch.dtype) -> None:
    elem = torch.empty((), dtype=dtype).element_size()

    def row(name: str, n: float) -> list[str]:
        return [name, si(n), si(n * elem, "B")]

    rep.table(
        ["parameters", "count", str(dtype).removeprefix("torch.")],
        [
            row("one layer: attention, router, norms", sizes.layer_dense),
            row(f"one layer: {sizes.experts} experts", sizes.experts * sizes.expert),
            row(f"one layer: active per token (top-{sizes.top_k})", sizes.layer_active),
            row("embedding", sizes.embed),
            row("lm_head + final norm", sizes.head),
            row(f"built: {layers} layers", sizes.total(layers)),
            row(f"projected: {FULL_LAYERS} layers", sizes.total(FULL_LAYERS)),
            row(f"projected: {FULL_LAYERS} layers, active per token", sizes.head + FULL_LAYERS * sizes.layer_active),
        ],
    )  # fmt: skip
