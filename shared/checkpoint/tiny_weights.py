"""Published tensor names and shapes of a Qwen3-VL(-MoE) checkpoint, and their random init.

Shapes follow the published files, not transformers' in-memory modules: fused experts are
``gate_up_proj [E, H, 2I]`` (x @ W; columns [:I] gate, [I:] up) and ``down_proj [E, I, H]``.

Init keeps activations O(1) through the layers: linears ~ N(0, 1/fan_in), norms 1 + noise,
embeddings ~ N(0, 1), the router wide enough that top-k varies across tokens, and lm_head wide
enough (logit std ~4) that greedy decoding has clear winners. Each tensor has its own generator
seeded by (seed, name), so one part's values do not depend on another part's sizes.
"""

from __future__ import annotations

import math
import zlib

import torch

from shared.checkpoint.tiny_spec import TinySpec

V = "model.visual"
L = "model.language_model"


def vision_shapes(spec: TinySpec) -> dict[str, tuple[int, ...]]:
    vh, vi = spec.vision_hidden_size, spec.vision_intermediate_size
    merged = vh * 4  # spatial_merge_size ** 2 patches concatenated
    s: dict[str, tuple[int, ...]] = {
        f"{V}.patch_embed.proj.weight": (vh, 3, 2, 16, 16),
        f"{V}.patch_embed.proj.bias": (vh,),
        f"{V}.pos_embed.weight": (spec.num_position_embeddings, vh),
    }
    for i in range(spec.vision_depth):
        b = f"{V}.blocks.{i}"
        s.update(
            {
                f"{b}.norm1.weight": (vh,),
                f"{b}.norm1.bias": (vh,),
                f"{b}.norm2.weight": (vh,),
                f"{b}.norm2.bias": (vh,),
                f"{b}.attn.qkv.weight": (3 * vh, vh),
                f"{b}.attn.qkv.bias": (3 * vh,),
                f"{b}.attn.proj.weight": (vh, vh),
                f"{b}.attn.proj.bias": (vh,),
                f"{b}.mlp.linear_fc1.weight": (vi, vh),
                f"{b}.mlp.linear_fc1.bias": (vi,),
                f"{b}.mlp.linear_fc2.weight": (vh, vi),
                f"{b}.mlp.linear_fc2.bias": (vh,),
            }
        )
    mergers = [(f"{V}.merger", vh)]
    mergers += [(f"{V}.deepstack_merger_list.{j}", merged) for j in range(len(spec.deepstack_visual_indexes))]
    for m, norm_dim in mergers:  # the final merger norms before the 2x2 shuffle, deepstack ones after
        s.update(
            {
                f"{m}.norm.weight": (norm_dim,),
                f"{m}.norm.bias": (norm_dim,),
                f"{m}.linear_fc1.weight": (merged, merged),
                f"{m}.linear_fc1.bias": (merged,),
                f"{m}.linear_fc2.weight": (spec.hidden_size, merged),
                f"{m}.linear_fc2.bias": (spec.hidden_size,),
            }
        )
    return s


def text_shapes(spec: TinySpec) -> dict[str, tuple[int, ...]]:
    assert spec.vocab_size is not None, "resolve the spec first"
    h, hd = spec.hidden_size, spec.head_dim
    q, kv = spec.num_attention_heads * hd, spec.num_key_value_heads * hd
    s: dict[str, tuple[int, ...]] = {f"{L}.embed_tokens.weight": (spec.vocab_size, h)}
    for i in range(spec.num_hidden_layers):
        p = f"{L}.layers.{i}"
        s.update(
            {
                f"{p}.input_layernorm.weight": (h,),
                f"{p}.self_attn.q_proj.weight": (q, h),
                f"{p}.self_attn.k_proj.weight": (kv, h),
                f"{p}.self_attn.v_proj.weight": (kv, h),
                f"{p}.self_attn.o_proj.weight": (h, q),
                f"{p}.self_attn.q_norm.weight": (hd,),
                f"{p}.self_attn.k_norm.weight": (hd,),
                f"{p}.post_attention_layernorm.weight": (h,),
            }
        )
        if spec.is_moe_layer(i):
            e, mi = spec.num_experts, spec.moe_intermediate_size
            s[f"{p}.mlp.gate.weight"] = (e, h)
            s[f"{p}.mlp.experts.gate_up_proj"] = (e, h, 2 * mi)
            s[f"{p}.mlp.experts.down_proj"] = (e, mi, h)
        else:
            s[f"{p}.mlp.gate_proj.weight"] = (spec.intermediate_size, h)
            s[f"{p}.mlp.up_proj.weight"] = (spec.intermediate_size, h)
            s[f"{p}.mlp.down_proj.weight"] = (h, spec.intermediate_size)
    s[f"{L}.norm.weight"] = (h,)
    if not spec.tie_word_embeddings:
        s["lm_head.weight"] = (spec.vocab_size, h)
    return s


def published_shapes(spec: TinySpec) -> dict[str, tuple[int, ...]]:
    return {**vision_shapes(spec), **text_shapes(spec)}


def num_params(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(math.prod(s) for s in shapes.values())


def _std(name: str, shape: tuple[int, ...], hidden: int) -> float:
    module = name.rsplit(".", 2)[-2]
    if name.endswith(".bias"):
        return 0.02
    if "norm" in module:
        return 0.1  # around 1, see init_tensor
    if name.endswith("embed_tokens.weight"):
        return 1.0
    if name.endswith("pos_embed.weight"):
        return 0.5
    if name == "lm_head.weight":
        return 4.0 / math.sqrt(hidden)
    if name.endswith("mlp.gate.weight"):
        return 2.0 / math.sqrt(hidden)
    if name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
        return 1.0 / math.sqrt(shape[1])  # published [E, in, out]
    return 1.0 / math.sqrt(math.prod(shape[1:]))  # [out, in...]


def init_tensor(name: str, shape: tuple[int, ...], spec: TinySpec) -> torch.Tensor:
    gen = torch.Generator().manual_seed(zlib.crc32(f"{spec.seed}/{name}".encode()))
    t = torch.randn(shape, generator=gen) * _std(name, shape, spec.hidden_size)
    if "norm" in name.rsplit(".", 2)[-2] and name.endswith(".weight"):
        t += 1.0
    return t


def random_state(spec: TinySpec, num_real_tokens: int) -> dict[str, torch.Tensor]:
    """fp32 weights in published naming and layout (fused experts).

    Rows of ids past the tokenizer (vocab padding, as in the real 151936 > 151669) are zero, so
    greedy decoding never picks a token that does not exist.
    """
    state = {name: init_tensor(name, shape, spec) for name, shape in published_shapes(spec).items()}
    for name in (f"{L}.embed_tokens.weight", "lm_head.weight"):
        if name in state:
            state[name][num_real_tokens:] = 0.0
    return state
