"""Write a tiny random Qwen3-VL-MoE (or dense Qwen3-VL) checkpoint in the published HF layout.

    epd make-tiny-checkpoint OUT_DIR [--dense] [--shards 3] [--dtype bfloat16] ...

The folder holds what a published Qwen3-VL repository holds: config.json, generation_config.json,
preprocessor_config.json, video_preprocessor_config.json, model.safetensors (or shards + index),
tokenizer.json / vocab.json / merges.txt / tokenizer_config.json and chat_template.jinja (copied
from shared/multimodal/chat_template.jinja). Same spec, same bytes.

Python: ``make_tiny_checkpoint(out_dir, **spec_fields)`` (fields of ``TinySpec``); in tests,
``cached_tiny_checkpoint(root, **spec_fields)`` builds each distinct spec once under ``root``.
The same seed gives the same weights whatever the expert layout, shard count or dtype. To save
other weights in this layout (e.g. a transformers model's ``state_dict()``), build a checkpoint and
overwrite its weights with ``write_published(state, out_dir, source="transformers", ...)``;
``relayout_checkpoint(src, dst, expert_layout=..., shards=..., dtype=...)`` copies one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from shared.checkpoint.layout import read_published, relayout_checkpoint, write_published
from shared.checkpoint.tiny_spec import (
    DTYPES,
    EXPERT_LAYOUTS,
    TinySpec,
    generation_config,
    hf_config,
    preprocessor_config,
    video_preprocessor_config,
)
from shared.checkpoint.tiny_tokenizer import build_tokenizer, special_token_ids, write_tokenizer
from shared.checkpoint.tiny_weights import num_params, random_state, text_shapes, vision_shapes
from shared.multimodal.chat_template import BUNDLED_TEMPLATE_PATH

__all__ = [
    "TinySpec",
    "cached_tiny_checkpoint",
    "make_tiny_checkpoint",
    "read_published",
    "relayout_checkpoint",
    "resolve_spec",
    "tiny_state",
    "write_published",
]

DEFAULT_CHAT_TEMPLATE = BUNDLED_TEMPLATE_PATH
VOCAB_MULTIPLE = 64


def read_chat_template(spec: TinySpec) -> str:
    path = Path(spec.chat_template_path) if spec.chat_template_path else DEFAULT_CHAT_TEMPLATE
    try:
        return path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"chat template {path} not found: the checkpoint copies the project's Qwen3-VL chat template "
            "(shared/multimodal/chat_template.jinja); write it first or pass chat_template_path"
        ) from None


def resolve_spec(spec: TinySpec, num_tokens: int) -> TinySpec:
    """Fill in vocab_size and, for text_to_vision_ratio, the number of text layers."""
    vocab = spec.vocab_size
    if vocab is None:
        vocab = -(-num_tokens // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    if vocab < num_tokens:
        raise ValueError(f"vocab_size {vocab} < tokenizer length {num_tokens}")
    spec = spec.replace(vocab_size=vocab)
    if spec.text_to_vision_ratio is not None:
        vision = num_params(vision_shapes(spec))
        while num_params(text_shapes(spec)) < spec.text_to_vision_ratio * vision:
            spec = spec.replace(num_hidden_layers=spec.num_hidden_layers + 1)
    return spec


def tiny_state(spec: TinySpec | None = None, **fields: Any) -> tuple[TinySpec, dict[str, torch.Tensor]]:
    """The resolved spec and its fp32 weights in published fused layout, without writing files."""
    spec = spec or TinySpec(**fields)
    tok = build_tokenizer(spec.bpe_vocab_size)
    spec = resolve_spec(spec, tok.get_vocab_size())
    return spec, random_state(spec, tok.get_vocab_size())


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def make_tiny_checkpoint(out_dir: str | Path, *, spec: TinySpec | None = None, **fields: Any) -> Path:
    """Write the checkpoint for ``spec`` (or ``TinySpec(**fields)``) into ``out_dir``; return it."""
    spec = spec or TinySpec(**fields)
    chat_template = read_chat_template(spec)
    tok = build_tokenizer(spec.bpe_vocab_size)
    ids = special_token_ids(tok)
    spec = resolve_spec(spec, tok.get_vocab_size())
    state = random_state(spec, tok.get_vocab_size())

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "config.json", hf_config(spec, ids))
    _write_json(out / "generation_config.json", generation_config(ids))
    _write_json(out / "preprocessor_config.json", preprocessor_config(spec))
    _write_json(out / "video_preprocessor_config.json", video_preprocessor_config(spec))
    write_tokenizer(out, tok, chat_template)
    write_published(
        state,
        out,
        expert_layout=spec.expert_layout,  # type: ignore[arg-type]
        shards=spec.shards,
        dtype=spec.dtype,
        tie_word_embeddings=spec.tie_word_embeddings,
    )
    return out


def cached_tiny_checkpoint(root: str | Path, *, spec: TinySpec | None = None, **fields: Any) -> Path:
    """Build each distinct spec once under ``root`` (e.g. pytest's basetemp) and reuse it.

    Safe across processes (pytest-xdist): each build goes to a private folder that is renamed
    into place; a finished folder is never modified.
    """
    spec = spec or TinySpec(**fields)
    key = hashlib.sha256(repr(spec).encode())
    key.update(read_chat_template(spec).encode())
    for module in ("tiny_spec", "tiny_weights", "tiny_tokenizer", "layout", "tiny"):
        key.update((Path(__file__).parent / f"{module}.py").read_bytes())
    root = Path(root)
    final = root / f"tiny-qwen3vl-{'dense' if spec.dense else 'moe'}-{key.hexdigest()[:12]}"
    if final.exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=root, prefix=".building-"))
    try:
        make_tiny_checkpoint(building, spec=spec)
        os.rename(building, final)
    except OSError:
        if not final.exists():
            raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return final


def _parse_args(argv: list[str] | None) -> tuple[Path, dict[str, Any]]:
    d = TinySpec()
    p = argparse.ArgumentParser(prog="epd make-tiny-checkpoint", description=__doc__.split("\n")[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--dense", action="store_true", help="dense Qwen3-VL (plain MLP) instead of MoE")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--dtype", choices=DTYPES, default=d.dtype)
    p.add_argument("--expert-layout", choices=EXPERT_LAYOUTS, default=d.expert_layout)
    p.add_argument("--shards", type=int, default=d.shards)
    p.add_argument("--tie-word-embeddings", action="store_true")
    ints = {
        "vocab-size": "vocab_size",
        "hidden-size": "hidden_size",
        "layers": "num_hidden_layers",
        "heads": "num_attention_heads",
        "kv-heads": "num_key_value_heads",
        "head-dim": "head_dim",
        "intermediate-size": "intermediate_size",
        "experts": "num_experts",
        "top-k": "num_experts_per_tok",
        "moe-intermediate-size": "moe_intermediate_size",
        "decoder-sparse-step": "decoder_sparse_step",
        "vision-depth": "vision_depth",
        "vision-hidden-size": "vision_hidden_size",
        "vision-heads": "vision_num_heads",
        "vision-intermediate-size": "vision_intermediate_size",
        "num-position-embeddings": "num_position_embeddings",
        "bpe-vocab-size": "bpe_vocab_size",
        "min-pixels": "min_pixels",
        "max-pixels": "max_pixels",
    }
    for flag, field in ints.items():
        p.add_argument(f"--{flag}", dest=field, type=int, default=getattr(d, field))
    p.add_argument("--mlp-only-layers", type=int, nargs="*", default=list(d.mlp_only_layers))
    p.add_argument(
        "--deepstack-visual-indexes", type=int, nargs="+", default=list(d.deepstack_visual_indexes)
    )
    p.add_argument("--mrope-section", type=int, nargs=3, default=None)
    p.add_argument("--rope-theta", type=float, default=d.rope_theta)
    p.add_argument(
        "--text-to-vision-ratio",
        type=float,
        default=None,
        help="add text layers until the language part has at least this many times the vision params",
    )
    p.add_argument("--chat-template", dest="chat_template_path", default=None, help="default: the project's")
    args = vars(p.parse_args(argv))
    out_dir = args.pop("out_dir")
    return out_dir, args


def main(argv: list[str] | None = None) -> int:
    torch.set_num_threads(1)
    out_dir, fields = _parse_args(argv)
    try:
        spec = TinySpec(**fields)
        path = make_tiny_checkpoint(out_dir, spec=spec)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = json.loads((path / "config.json").read_text())
    resolved = resolve_spec(spec, build_tokenizer(spec.bpe_vocab_size).get_vocab_size())
    vision, text = num_params(vision_shapes(resolved)), num_params(text_shapes(resolved))
    print(f"wrote {path}")
    print(f"  {cfg['architectures'][0]}, {cfg['text_config']['num_hidden_layers']} text layers, {spec.dtype}")
    print(f"  params: vision {vision:,}, language {text:,} ({text / vision:.1f}x)")
    for f in sorted(path.iterdir()):
        print(f"  {f.name:40s} {f.stat().st_size:>12,} B")
    print(f"  image_token_id {cfg['image_token_id']}, eos {cfg['text_config']['eos_token_id']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
