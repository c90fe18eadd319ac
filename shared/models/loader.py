"""Loading a Hugging Face Qwen3-VL(-MoE) checkpoint directory into our model.

What it accepts: config.json; one ``*.safetensors`` file, several, or shards listed in
``model.safetensors.index.json``; experts fused as published (``experts.gate_up_proj [E, H, 2I]``,
``experts.down_proj [E, I, H]``) or one module per expert (``experts.{e}.gate_proj.weight`` ...);
tied or untied embeddings; any stored float dtype, cast to the requested one.

Selective loading: a vision-only load builds only the vision tower and reads only
``model.visual.*`` tensors (safetensors reads tensors by offset, so the language shards are never
paged in); a language-only load reads only ``model.language_model.*`` and ``lm_head.*``.

Every problem is a ``CheckpointError`` naming the key and the file: a missing or unexpected key,
a shape mismatch, an unreadable or truncated file, an unknown model type.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from shared.models.config import ConfigError, ModelConfig, load_config
from shared.models.qwen3_vl_moe import (
    PARTS,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeForConditionalGeneration,
)

# checkpoint prefix -> (part, our module prefix)
PREFIXES = (
    ("model.visual.", "vision", "visual."),
    ("model.language_model.", "language", "model."),
    ("lm_head.", "language", "lm_head."),
)
PER_EXPERT = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


class CheckpointError(ValueError):
    """The checkpoint directory cannot be loaded; the message names the key and file at fault."""


def index_checkpoint(checkpoint_dir: Path) -> dict[str, Path]:
    """Map every tensor name to the file that holds it, reading only the files' headers."""
    index_path = checkpoint_dir / "model.safetensors.index.json"
    if index_path.exists():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index_path}: unreadable shard index: {e}") from None
        files = sorted({checkpoint_dir / name for name in weight_map.values()})
    else:
        files = sorted(checkpoint_dir.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{checkpoint_dir}: no *.safetensors files and no shard index")
    key_to_file: dict[str, Path] = {}
    for path in files:
        for key in _read_keys(path):
            if key in key_to_file:
                raise CheckpointError(f"{path}: key {key!r} also stored in {key_to_file[key]}")
            key_to_file[key] = path
    if index_path.exists():
        for key, name in weight_map.items():
            if key_to_file.get(key) != checkpoint_dir / name:
                raise CheckpointError(f"{index_path}: key {key!r} is not in {name} as the index claims")
    return key_to_file


def _read_keys(path: Path) -> list[str]:
    if not path.exists():
        raise CheckpointError(f"{path}: shard listed in the index does not exist")
    try:
        with safe_open(path, framework="pt") as f:
            return list(f.keys())
    except (SafetensorError, OSError) as e:
        raise CheckpointError(
            f"{path}: not a readable safetensors file (truncated or corrupt?): {e}"
        ) from None


def _map_key(key: str) -> tuple[str, str] | None:
    for ckpt_prefix, part, ours in PREFIXES:
        if key.startswith(ckpt_prefix):
            return part, ours + key[len(ckpt_prefix) :]
    return None


def _get(path: Path, key: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    try:
        with safe_open(path, framework="pt") as f:
            tensor = f.get_tensor(key)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read {key!r} (truncated or corrupt file?): {e}") from None
    return tensor.to(device=device, dtype=dtype)


def _fuse_experts(
    name: str, members: dict[tuple[int, str], tuple[str, Path]], num_experts: int, load
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-expert gate/up/down [I, H] / [I, H] / [H, I] -> fused [E, H, 2I] and [E, I, H]."""
    gate_up, down = [], []
    for e in range(num_experts):
        parts = {}
        for proj in ("gate_proj", "up_proj", "down_proj"):
            if (e, proj) not in members:
                raise CheckpointError(f"missing key {name}.{e}.{proj}.weight (per-expert layout)")
            parts[proj] = load(*members[(e, proj)])
        gate_up.append(torch.cat((parts["gate_proj"].t(), parts["up_proj"].t()), dim=1))
        down.append(parts["down_proj"].t())
    return torch.stack(gate_up), torch.stack(down)


def load_model(
    checkpoint_dir: str | Path,
    parts: Iterable[str] = PARTS,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "cpu",
) -> Qwen3VLMoeForConditionalGeneration:
    """Build the requested parts of the model and fill them from the checkpoint, nothing else."""
    checkpoint_dir = Path(checkpoint_dir)
    try:
        config = load_config(checkpoint_dir)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    parts = frozenset(parts)
    target = config.resolve_dtype(dtype)
    device = torch.device(device)
    cls = Qwen3VLMoeForConditionalGeneration if config.is_moe else Qwen3VLForConditionalGeneration
    with torch.device("meta"):
        model = cls(config, parts)
    expected = dict(model.state_dict(keep_vars=True))
    if config.tie_word_embeddings and "lm_head.weight" in expected:
        del expected["lm_head.weight"]

    key_to_file = index_checkpoint(checkpoint_dir)
    state, per_expert = _collect(key_to_file, parts, expected, config, target, device)
    for name, members in per_expert.items():
        fused = _fuse_experts(name, members, config.text.num_experts, lambda k, p: _get(p, k, target, device))
        for suffix, tensor in zip(("gate_up_proj", "down_proj"), fused, strict=True):
            state[f"{name}.{suffix}"] = (tensor, key_to_file[next(iter(members.values()))[0]])

    for key, param in expected.items():
        if key not in state:
            raise CheckpointError(f"{checkpoint_dir}: missing key {_ckpt_name(key)!r} (for {key})")
        tensor, path = state[key]
        if tensor.shape != param.shape:
            raise CheckpointError(
                f"{path}: key {_ckpt_name(key)!r} has shape {list(tensor.shape)}, "
                f"the config implies {list(param.shape)}"
            )
    model.load_state_dict({k: t for k, (t, _) in state.items()}, strict=True, assign=True)
    if config.tie_word_embeddings and model.lm_head is not None:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()


def _collect(key_to_file, parts, expected, config: ModelConfig, dtype, device):
    state: dict[str, tuple[torch.Tensor, Path]] = {}
    per_expert: dict[str, dict[tuple[int, str], tuple[str, Path]]] = {}
    for key, path in key_to_file.items():
        mapped = _map_key(key)
        if mapped is None:
            raise CheckpointError(f"{path}: unexpected key {key!r} (not part of a Qwen3-VL checkpoint)")
        part, ours = mapped
        if part not in parts:
            continue  # the other half's tensors are never read
        if ours == "lm_head.weight" and config.tie_word_embeddings:
            continue
        match = PER_EXPERT.match(ours)
        if match:
            group, expert, proj = match.group(1), int(match.group(2)), match.group(3)
            if expert >= config.text.num_experts:
                raise CheckpointError(f"{path}: unexpected key {key!r}: expert {expert} >= num_experts")
            per_expert.setdefault(group, {})[(expert, proj)] = (key, path)
            continue
        if ours not in expected:
            raise CheckpointError(f"{path}: unexpected key {key!r}")
        state[ours] = (_get(path, key, dtype, device), path)
    return state, per_expert


def _ckpt_name(ours: str) -> str:
    for ckpt_prefix, _, prefix in PREFIXES:
        if ours.startswith(prefix):
            return ckpt_prefix + ours[len(prefix) :]
    return ours
