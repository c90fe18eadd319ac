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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open

from shared.models.config import ConfigError, ModelConfig, load_config
from shared.models.qwen3_vl_moe import (
    PARTS,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeForConditionalGeneration,
)

T = TypeVar("T")

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
    """Map every tensor name to the file that holds it.

    With a shard index the index is trusted and no shard is opened here (so a load opens only
    the shards that hold its part); without one, each file's header is read.
    """
    index_path = checkpoint_dir / "model.safetensors.index.json"
    if index_path.exists():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
            key_to_file = {str(k): checkpoint_dir / str(v) for k, v in weight_map.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index_path}: unreadable shard index: {e}") from None
        for path in set(key_to_file.values()):
            if not path.is_file():
                raise CheckpointError(f"{index_path}: shard {path.name} listed in the index does not exist")
        return key_to_file
    files = sorted(checkpoint_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{checkpoint_dir}: no *.safetensors files and no shard index")
    key_to_file = {}
    for path in files:
        for key in _open(path, lambda f: list(f.keys())):
            if key in key_to_file:
                raise CheckpointError(f"{path}: key {key!r} also stored in {key_to_file[key]}")
            key_to_file[key] = path
    return key_to_file


def _open(path: Path, use: Callable[[Any], T]) -> T:
    try:
        with safe_open(path, framework="pt") as f:
            return use(f)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(
            f"{path}: not a readable safetensors file (truncated or corrupt?): {e}"
        ) from None


def read_tensors(
    path: Path, keys: list[str], dtype: torch.dtype, device: torch.device
) -> dict[str, torch.Tensor]:
    """Read just ``keys`` from one file (by offset: the rest of the file is never paged in)."""

    def use(f: Any) -> dict[str, torch.Tensor]:
        present = set(f.keys())
        out = {}
        for key in keys:
            if key not in present:
                raise CheckpointError(f"{path}: missing key {key!r} (the shard index places it here)")
            out[key] = f.get_tensor(key).to(device=device, dtype=dtype)
        return out

    return _open(path, use)


def _map_key(key: str) -> tuple[str, str] | None:
    for ckpt_prefix, part, ours in PREFIXES:
        if key.startswith(ckpt_prefix):
            return part, ours + key[len(ckpt_prefix) :]
    return None


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
    plan = _plan(key_to_file, parts, expected, config)  # ours -> (checkpoint key, file)
    by_file: dict[Path, list[str]] = {}
    for key, path in plan.values():
        by_file.setdefault(path, []).append(key)
    loaded: dict[str, torch.Tensor] = {}
    for path, keys in by_file.items():
        loaded.update(read_tensors(path, keys, target, device))
    state = {ours: loaded[key] for ours, (key, _) in plan.items() if not PER_EXPERT.match(ours)}
    state.update(_fuse_experts(plan, loaded, config.text.num_experts))

    for ours, param in expected.items():
        if ours not in state:
            raise CheckpointError(f"{checkpoint_dir}: missing key {_ckpt_name(ours)!r}")
        if state[ours].shape != param.shape:
            where = plan[ours][1] if ours in plan else checkpoint_dir
            raise CheckpointError(
                f"{where}: key {_ckpt_name(ours)!r} has shape {list(state[ours].shape)}, "
                f"the config implies {list(param.shape)}"
            )
    tied = config.tie_word_embeddings and model.lm_head is not None
    if tied:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if tied:
        assert model.lm_head is not None and model.model is not None
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()


def _plan(
    key_to_file: dict[str, Path], parts: frozenset[str], expected: dict, config: ModelConfig
) -> dict[str, tuple[str, Path]]:
    """Decide which checkpoint tensors this load reads, rejecting keys that fit nowhere."""
    plan: dict[str, tuple[str, Path]] = {}
    for key, path in key_to_file.items():
        mapped = _map_key(key)
        if mapped is None:
            raise CheckpointError(f"{path}: unexpected key {key!r} (not part of a Qwen3-VL checkpoint)")
        part, ours = mapped
        if part not in parts or (ours == "lm_head.weight" and config.tie_word_embeddings):
            continue  # the other half's tensors are never read
        match = PER_EXPERT.match(ours)
        if match and int(match.group(2)) >= config.text.num_experts:
            raise CheckpointError(f"{path}: unexpected key {key!r}: expert index >= num_experts")
        if not match and ours not in expected:
            raise CheckpointError(f"{path}: unexpected key {key!r}")
        plan[ours] = (key, path)
    return plan


def _fuse_experts(
    plan: dict[str, tuple[str, Path]], loaded: dict[str, torch.Tensor], num_experts: int
) -> dict[str, torch.Tensor]:
    """Per-expert gate/up/down [I, H] / [I, H] / [H, I] -> fused [E, H, 2I] and [E, I, H]."""
    groups: dict[str, dict[tuple[int, str], torch.Tensor]] = {}
    for ours, (key, _) in plan.items():
        match = PER_EXPERT.match(ours)
        if match:
            groups.setdefault(match.group(1), {})[(int(match.group(2)), match.group(3))] = loaded[key]
    fused = {}
    for group, members in groups.items():
        gate_up, down = [], []
        for e in range(num_experts):
            for proj in ("gate_proj", "up_proj", "down_proj"):
                if (e, proj) not in members:
                    raise CheckpointError(f"missing key {_ckpt_name(f'{group}.{e}.{proj}.weight')!r}")
            gate_up.append(torch.cat((members[(e, "gate_proj")].t(), members[(e, "up_proj")].t()), dim=1))
            down.append(members[(e, "down_proj")].t())
        fused[f"{group}.gate_up_proj"] = torch.stack(gate_up)
        fused[f"{group}.down_proj"] = torch.stack(down)
    return fused


def _ckpt_name(ours: str) -> str:
    for ckpt_prefix, _, prefix in PREFIXES:
        if ours.startswith(prefix):
            return ckpt_prefix + ours[len(prefix) :]
    return ours
