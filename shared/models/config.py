"""Model configuration: the parts of a checkpoint's config.json the model code reads.

Published Qwen3-VL checkpoints (transformers 4.57 era) give rotary settings as ``rope_scaling`` plus
``rope_theta``; transformers 5 writes ``rope_parameters``. Both are accepted. Everything else the
services need (token ids, sizes) is a property here so that no service parses config.json itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

MOE_MODEL_TYPES = {"qwen3_vl_moe"}
DENSE_MODEL_TYPES = {"qwen3_vl"}
SUPPORTED_MODEL_TYPES = MOE_MODEL_TYPES | DENSE_MODEL_TYPES


class ConfigError(ValueError):
    """config.json is missing, unreadable or describes a model this code does not implement."""


@dataclass(frozen=True)
class VisionConfig:
    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    out_hidden_size: int
    num_position_embeddings: int
    deepstack_visual_indexes: tuple[int, ...]
    in_channels: int = 3
    patch_size: int = 16
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    hidden_act: str = "gelu_pytorch_tanh"
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened input patch: C * T * P * P."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def merge_unit(self) -> int:
        return self.spatial_merge_size**2


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    rope_theta: float
    mrope_section: tuple[int, int, int]
    max_position_embeddings: int
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = ()
    attention_bias: bool = False
    hidden_act: str = "silu"

    def is_moe_layer(self, layer_idx: int) -> bool:
        return (
            self.num_experts > 0
            and layer_idx not in self.mlp_only_layers
            and (layer_idx + 1) % self.decoder_sparse_step == 0
        )

    @property
    def kv_elements_per_token(self) -> int:
        """K and V of one token across all layers, in elements (multiply by the dtype size)."""
        return self.num_hidden_layers * 2 * self.num_key_value_heads * self.head_dim


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    text: TextConfig
    vision: VisionConfig
    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int
    tie_word_embeddings: bool
    torch_dtype: str = "float32"
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)

    @property
    def is_moe(self) -> bool:
        return self.model_type in MOE_MODEL_TYPES

    @property
    def num_deepstack_levels(self) -> int:
        return len(self.vision.deepstack_visual_indexes)

    def resolve_dtype(self, dtype: str | torch.dtype) -> torch.dtype:
        """``auto`` means the checkpoint's own dtype."""
        if isinstance(dtype, torch.dtype):
            return dtype
        name = self.torch_dtype if dtype == "auto" else dtype
        try:
            return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
        except KeyError:
            raise ConfigError(f"unsupported dtype {name!r}: use auto, float32, bfloat16 or float16") from None


def _need(d: dict[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise ConfigError(f"{where} lacks required key {key!r}")
    return d[key]


def _rope(text: dict[str, Any]) -> tuple[float, tuple[int, int, int]]:
    params = text.get("rope_parameters") or text.get("rope_scaling") or {}
    theta = params.get("rope_theta", text.get("rope_theta", 500000.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", "mrope"):
        raise ConfigError(f"text_config rope_type {rope_type!r} is not supported")
    section = tuple(params.get("mrope_section", (24, 20, 20)))
    if len(section) != 3:
        raise ConfigError(f"mrope_section must have 3 entries, got {list(section)}")
    return float(theta), (int(section[0]), int(section[1]), int(section[2]))


def parse_config(raw: dict[str, Any]) -> ModelConfig:
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"model_type {model_type!r} is not supported (expected one of {sorted(SUPPORTED_MODEL_TYPES)})"
        )
    t = _need(raw, "text_config", "the top level")
    v = _need(raw, "vision_config", "the top level")
    hidden = _need(t, "hidden_size", "text_config")
    heads = _need(t, "num_attention_heads", "text_config")
    head_dim = t.get("head_dim") or hidden // heads
    theta, section = _rope(t)
    if sum(section) != head_dim // 2:
        raise ConfigError(f"mrope_section {list(section)} must sum to head_dim/2 = {head_dim // 2}")
    is_moe = model_type in MOE_MODEL_TYPES
    text = TextConfig(
        vocab_size=_need(t, "vocab_size", "text_config"),
        hidden_size=hidden,
        num_hidden_layers=_need(t, "num_hidden_layers", "text_config"),
        num_attention_heads=heads,
        num_key_value_heads=t.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        intermediate_size=t.get("intermediate_size", 0),
        rms_norm_eps=t.get("rms_norm_eps", 1e-6),
        rope_theta=theta,
        mrope_section=section,
        max_position_embeddings=t.get("max_position_embeddings", 128000),
        num_experts=(
            t["num_local_experts"] if "num_local_experts" in t else _need(t, "num_experts", "text_config")
        )
        if is_moe
        else 0,
        num_experts_per_tok=_need(t, "num_experts_per_tok", "text_config") if is_moe else 0,
        moe_intermediate_size=_need(t, "moe_intermediate_size", "text_config") if is_moe else 0,
        decoder_sparse_step=t.get("decoder_sparse_step", 1),
        mlp_only_layers=tuple(t.get("mlp_only_layers") or ()),
        attention_bias=bool(t.get("attention_bias", False)),
        hidden_act=t.get("hidden_act", "silu"),
    )
    if text.hidden_act != "silu":
        raise ConfigError(f"text hidden_act {text.hidden_act!r} is not supported (silu only)")
    vision_rope = v.get("rope_parameters") or {}
    vision = VisionConfig(
        depth=_need(v, "depth", "vision_config"),
        hidden_size=_need(v, "hidden_size", "vision_config"),
        intermediate_size=_need(v, "intermediate_size", "vision_config"),
        num_heads=_need(v, "num_heads", "vision_config"),
        out_hidden_size=v.get("out_hidden_size", hidden),
        num_position_embeddings=_need(v, "num_position_embeddings", "vision_config"),
        deepstack_visual_indexes=tuple(v.get("deepstack_visual_indexes", ())),
        in_channels=v.get("in_channels", 3),
        patch_size=v.get("patch_size", 16),
        temporal_patch_size=v.get("temporal_patch_size", 2),
        spatial_merge_size=v.get("spatial_merge_size", 2),
        hidden_act=v.get("hidden_act", "gelu_pytorch_tanh"),
        rope_theta=float(vision_rope.get("rope_theta", 10000.0)),
    )
    if vision.out_hidden_size != hidden:
        raise ConfigError(f"vision out_hidden_size {vision.out_hidden_size} != text hidden_size {hidden}")
    side = int(round(vision.num_position_embeddings**0.5))
    if side * side != vision.num_position_embeddings:
        raise ConfigError("vision num_position_embeddings must be a perfect square")
    eos = t.get("eos_token_id", raw.get("eos_token_id"))
    eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if isinstance(eos, int) else ())
    return ModelConfig(
        model_type=model_type,
        text=text,
        vision=vision,
        image_token_id=raw.get("image_token_id", 151655),
        video_token_id=raw.get("video_token_id", 151656),
        vision_start_token_id=raw.get("vision_start_token_id", 151652),
        vision_end_token_id=raw.get("vision_end_token_id", 151653),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", t.get("tie_word_embeddings", False))),
        torch_dtype=str(raw.get("torch_dtype") or raw.get("dtype") or t.get("dtype") or "float32"),
        eos_token_ids=eos_ids,
    )


def load_config(checkpoint_dir: str | Path) -> ModelConfig:
    path = Path(checkpoint_dir) / "config.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (is {checkpoint_dir} a checkpoint directory?)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: unreadable: {e}") from None
    try:
        return parse_config(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
