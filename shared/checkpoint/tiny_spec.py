"""Sizes of a tiny Qwen3-VL(-MoE) checkpoint and the config.json they make.

config.json is laid out as the published Qwen3-VL-30B-A3B-Instruct one (transformers 4.57 era):
rope given as ``rope_scaling`` + ``rope_theta``, and the vision sub-config's ``model_type`` equal to
the top-level one (``qwen3_vl_moe`` / ``qwen3_vl``), which transformers 5 rewrites on load.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

DTYPES = ("float32", "bfloat16")
EXPERT_LAYOUTS = ("fused", "per-expert")


@dataclass(frozen=True)
class TinySpec:
    """Everything that determines a tiny checkpoint. Defaults give a ~2 MB MoE checkpoint."""

    dense: bool = False
    seed: int = 0
    # text
    vocab_size: int | None = None  # None: tokenizer length rounded up to a multiple of 64
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    intermediate_size: int = 128  # dense MLP (dense model, or mlp_only_layers of the MoE model)
    num_experts: int = 8
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 48  # not 32: hidden == 2 * I makes transformers skip the transpose
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = ()
    mrope_section: tuple[int, int, int] | None = None  # None: real proportions, summing to head_dim / 2
    rope_theta: float = 5_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    # vision
    vision_depth: int = 3
    vision_hidden_size: int = 32
    vision_num_heads: int = 2
    vision_intermediate_size: int = 64
    deepstack_visual_indexes: tuple[int, ...] = (0, 1)
    num_position_embeddings: int = 64
    # Grow num_hidden_layers until language params >= ratio * vision params (None: as given).
    text_to_vision_ratio: float | None = None
    # files
    dtype: str = "float32"
    expert_layout: str = "fused"
    shards: int = 1
    bpe_vocab_size: int = 1000
    min_pixels: int | None = None  # preprocessor size.shortest_edge; None: published 65536
    max_pixels: int | None = None  # preprocessor size.longest_edge; None: published 16777216
    chat_template_path: str | None = None  # None: shared/multimodal/chat_template.jinja of this repo

    def __post_init__(self) -> None:
        for name in ("mlp_only_layers", "deepstack_visual_indexes", "mrope_section"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"TinySpec: {msg}")

        need(self.dtype in DTYPES, f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        need(self.expert_layout in EXPERT_LAYOUTS, f"expert_layout must be one of {EXPERT_LAYOUTS}")
        need(self.shards >= 1, "shards must be >= 1")
        need(self.head_dim % 2 == 0, "head_dim must be even")
        need(self.num_attention_heads % self.num_key_value_heads == 0, "heads must be a multiple of kv heads")
        need(sum(self.mrope) == self.head_dim // 2, f"mrope_section {self.mrope} must sum to head_dim/2")
        need(self.vision_hidden_size % self.vision_num_heads == 0, "vision hidden % vision heads != 0")
        need(
            (self.vision_hidden_size // self.vision_num_heads) % 4 == 0,
            "vision head_dim must be a multiple of 4",
        )
        side = round(self.num_position_embeddings**0.5)
        need(side * side == self.num_position_embeddings, "num_position_embeddings must be a perfect square")
        need(len(self.deepstack_visual_indexes) >= 1, "at least one deepstack index")
        need(
            all(0 <= i < self.vision_depth for i in self.deepstack_visual_indexes),
            f"deepstack_visual_indexes {self.deepstack_visual_indexes} must lie in [0, vision_depth)",
        )
        need(
            self.num_hidden_layers >= len(self.deepstack_visual_indexes),
            "need at least one text layer per deepstack level",
        )
        if not self.dense:
            need(0 < self.num_experts_per_tok <= self.num_experts, "need 0 < top-k <= num_experts")
            h, i = self.hidden_size, self.moe_intermediate_size
            # transformers 5 transposes fused experts on load only when the file's shape differs from
            # its in-memory one ([E, 2I, H], [E, H, I]); with H == 2I or H == I it silently skips the
            # transpose and computes garbage, so such sizes would make it a useless oracle.
            need(
                h != 2 * i and h != i, f"hidden_size {h} must differ from moe_intermediate_size and twice it"
            )

    @property
    def mrope(self) -> tuple[int, int, int]:
        if self.mrope_section is not None:
            return self.mrope_section
        half = self.head_dim // 2
        hw = round(half * 20 / 64)  # published [24, 20, 20] for head_dim 128
        return (half - 2 * hw, hw, hw)

    def replace(self, **changes: Any) -> TinySpec:
        return dataclasses.replace(self, **changes)

    def is_moe_layer(self, layer: int) -> bool:
        return (
            not self.dense
            and layer not in self.mlp_only_layers
            and self.num_experts > 0
            and (layer + 1) % self.decoder_sparse_step == 0
        )


def hf_config(spec: TinySpec, token_ids: dict[str, int]) -> dict[str, Any]:
    """config.json for a resolved spec (vocab_size set); token_ids maps special tokens to ids."""
    assert spec.vocab_size is not None, "resolve the spec first"
    model_type = "qwen3_vl" if spec.dense else "qwen3_vl_moe"
    text: dict[str, Any] = {
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": token_ids["<|endoftext|>"],
        "dtype": spec.dtype,
        "eos_token_id": token_ids["<|im_end|>"],
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "hidden_size": spec.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": spec.intermediate_size,
        "max_position_embeddings": 262144,
        "model_type": f"{model_type}_text",
        "num_attention_heads": spec.num_attention_heads,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_key_value_heads": spec.num_key_value_heads,
        "rms_norm_eps": spec.rms_norm_eps,
        "rope_scaling": {
            "mrope_interleaved": True,
            "mrope_section": list(spec.mrope),
            "rope_type": "default",
        },
        "rope_theta": spec.rope_theta,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "use_cache": True,
        "vocab_size": spec.vocab_size,
    }
    if not spec.dense:
        text.update(
            decoder_sparse_step=spec.decoder_sparse_step,
            mlp_only_layers=list(spec.mlp_only_layers),
            moe_intermediate_size=spec.moe_intermediate_size,
            norm_topk_prob=True,
            num_experts=spec.num_experts,
            num_experts_per_tok=spec.num_experts_per_tok,
        )
    vision = {
        "deepstack_visual_indexes": list(spec.deepstack_visual_indexes),
        "depth": spec.vision_depth,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_size": spec.vision_hidden_size,
        "in_channels": 3,
        "initializer_range": 0.02,
        "intermediate_size": spec.vision_intermediate_size,
        "model_type": model_type,
        "num_heads": spec.vision_num_heads,
        "num_position_embeddings": spec.num_position_embeddings,
        "out_hidden_size": spec.hidden_size,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    return {
        "architectures": [
            "Qwen3VLForConditionalGeneration" if spec.dense else "Qwen3VLMoeForConditionalGeneration"
        ],
        "dtype": spec.dtype,
        "image_token_id": token_ids["<|image_pad|>"],
        "model_type": model_type,
        "text_config": dict(sorted(text.items())),
        "tie_word_embeddings": spec.tie_word_embeddings,
        "transformers_version": "4.57.0.dev0",
        "video_token_id": token_ids["<|video_pad|>"],
        "vision_config": vision,
        "vision_end_token_id": token_ids["<|vision_end|>"],
        "vision_start_token_id": token_ids["<|vision_start|>"],
    }


def preprocessor_config(spec: TinySpec) -> dict[str, Any]:
    """preprocessor_config.json with the published Qwen3-VL image processor settings."""
    return {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "Qwen2VLImageProcessor",
        "image_std": [0.5, 0.5, 0.5],
        "merge_size": 2,
        "patch_size": 16,
        "processor_class": "Qwen3VLProcessor",
        "rescale_factor": 1 / 255,
        "resample": 3,
        "size": {
            "longest_edge": spec.max_pixels if spec.max_pixels is not None else 16777216,
            "shortest_edge": spec.min_pixels if spec.min_pixels is not None else 65536,
        },
        "temporal_patch_size": 2,
    }


def video_preprocessor_config(spec: TinySpec) -> dict[str, Any]:
    return {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "do_sample_frames": True,
        "fps": 2,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "max_frames": 768,
        "merge_size": 2,
        "min_frames": 4,
        "patch_size": 16,
        "processor_class": "Qwen3VLProcessor",
        "rescale_factor": 1 / 255,
        "size": {"longest_edge": 25165824, "shortest_edge": 4096},
        "temporal_patch_size": 2,
        "video_processor_type": "Qwen3VLVideoProcessor",
    }


def generation_config(token_ids: dict[str, int]) -> dict[str, Any]:
    """generation_config.json: the published eos ids, but greedy (the published one samples)."""
    return {
        "bos_token_id": token_ids["<|endoftext|>"],
        "do_sample": False,
        "eos_token_id": [token_ids["<|im_end|>"], token_ids["<|endoftext|>"]],
        "pad_token_id": token_ids["<|endoftext|>"],
        "transformers_version": "4.57.0.dev0",
    }
