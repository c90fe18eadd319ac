"""The demo model's sizes, its tokenizer, and writing it as a published Hugging Face checkpoint.

``DEMO_SPEC`` is the architecture of ``shared/assets/demo`` (a ``TinySpec``, so config.json comes out
exactly as the tiny test checkpoints' do). The tokenizer is a Qwen-style byte-level BPE trained on
the demo's own synthetic chats (``tools.demo_data.corpus``) followed by Qwen's special tokens. The
preprocessor keeps the published processor settings (patch 16, merge 2, temporal patch 2, mean and
std 0.5) but a smaller pixel budget, ``MIN_PIXELS``..``MAX_PIXELS``, so that the largest picture
costs 49 image tokens and the smallest 16.

``write_demo_checkpoint`` writes config.json, generation_config.json, preprocessor_config.json,
video_preprocessor_config.json, the tokenizer files, chat_template.jinja and model.safetensors
(published key names, fused experts ``[E, H, 2I]`` / ``[E, I, H]``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import nn

from shared.assets import DEMO_MODEL_DIR
from shared.checkpoint.layout import write_published
from shared.checkpoint.tiny import DEFAULT_CHAT_TEMPLATE, resolve_spec
from shared.checkpoint.tiny_spec import (
    TinySpec,
    generation_config,
    hf_config,
    preprocessor_config,
    video_preprocessor_config,
)
from shared.checkpoint.tiny_tokenizer import special_token_ids, train_bpe, write_tokenizer
from tools.demo_data import corpus

DEMO_DIR = DEMO_MODEL_DIR
BPE_VOCAB_SIZE = 512
MIN_PIXELS = 128 * 128  # >= 16 image tokens: a 64 px picture is upscaled to 128 px
MAX_PIXELS = 224 * 224  # <= 49 image tokens: a 512 px picture is downscaled to 224 px

DEMO_SPEC = TinySpec(
    hidden_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    num_experts=8,
    num_experts_per_tok=2,
    moe_intermediate_size=96,
    vision_depth=4,
    vision_hidden_size=64,
    vision_num_heads=2,
    vision_intermediate_size=128,
    deepstack_visual_indexes=(1, 2),
    num_position_embeddings=256,
    min_pixels=MIN_PIXELS,
    max_pixels=MAX_PIXELS,
)

# our module prefix -> published checkpoint prefix
_PUBLISHED_PREFIX = (
    ("visual.", "model.visual."),
    ("model.", "model.language_model."),
    ("lm_head.", "lm_head."),
)


def build_demo_tokenizer(bpe_vocab_size: int = BPE_VOCAB_SIZE) -> Tokenizer:
    return train_bpe(corpus(), bpe_vocab_size)


def resolved_spec(tok: Tokenizer, **changes: Any) -> TinySpec:
    """``DEMO_SPEC`` (with ``changes``) with its vocabulary sized to the tokenizer."""
    return resolve_spec(DEMO_SPEC.replace(**changes), tok.get_vocab_size())


def published_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our model's weights under published names (experts are already in the fused layout)."""
    out = {}
    for name, tensor in model.state_dict().items():
        for ours, theirs in _PUBLISHED_PREFIX:
            if name.startswith(ours):
                out[theirs + name[len(ours) :]] = tensor.detach()
                break
        else:
            raise KeyError(f"no published name for {name}")
    return out


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_demo_checkpoint(
    out_dir: str | Path, spec: TinySpec, tok: Tokenizer, state: dict[str, torch.Tensor]
) -> Path:
    """Write every file of the checkpoint; ``state`` is in published naming and layout."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = special_token_ids(tok)
    _write_json(out / "config.json", hf_config(spec, ids))
    _write_json(out / "generation_config.json", generation_config(ids))
    _write_json(out / "preprocessor_config.json", preprocessor_config(spec))
    _write_json(out / "video_preprocessor_config.json", video_preprocessor_config(spec))
    write_tokenizer(out, tok, DEFAULT_CHAT_TEMPLATE.read_text())
    write_published(state, out, dtype=spec.dtype, tie_word_embeddings=spec.tie_word_embeddings)
    return out
