"""Write and read state dicts in the published Hugging Face checkpoint layout.

Three forms of the same MoE weights exist:

- published fused:       ``mlp.experts.gate_up_proj [E, H, 2I]``, ``mlp.experts.down_proj [E, I, H]``
- published per-expert:  ``mlp.experts.{e}.{gate_proj,up_proj}.weight [I, H]``, ``down_proj.weight [H, I]``
- transformers 5 memory: fused but transposed, ``gate_up_proj [E, 2I, H]``, ``down_proj [E, H, I]``

Every other name is the same in all three. Fused published is the canonical form here: inputs are
brought to it, outputs are made from it.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_FUSED = re.compile(r"^(?P<p>.+\.mlp\.experts)\.(?P<proj>gate_up_proj|down_proj)$")
_PER_EXPERT = re.compile(
    r"^(?P<p>.+\.mlp\.experts)\.(?P<e>\d+)\.(?P<proj>gate_proj|up_proj|down_proj)\.weight$"
)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

Source = Literal["published", "transformers"]
ExpertLayout = Literal["fused", "per-expert"]


def transpose_fused_experts(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Published fused <-> transformers in-memory fused (the same swap of dims 1 and 2 both ways)."""
    return {k: v.transpose(1, 2).contiguous() if _FUSED.match(k) else v for k, v in state.items()}


def fuse_experts(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-expert published keys -> fused published keys; other keys pass through."""
    out: dict[str, torch.Tensor] = {}
    groups: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    for k, v in state.items():
        m = _PER_EXPERT.match(k)
        if m:
            groups.setdefault(m["p"], {}).setdefault(int(m["e"]), {})[m["proj"]] = v
        else:
            out[k] = v
    for prefix, experts in groups.items():
        if sorted(experts) != list(range(len(experts))):
            raise ValueError(f"{prefix}: expert ids {sorted(experts)} are not 0..E-1")
        ordered = [experts[e] for e in range(len(experts))]
        out[f"{prefix}.gate_up_proj"] = torch.stack(
            [torch.cat([x["gate_proj"], x["up_proj"]], dim=0).T for x in ordered]
        ).contiguous()  # [E, H, 2I]
        out[f"{prefix}.down_proj"] = torch.stack(
            [x["down_proj"].T for x in ordered]
        ).contiguous()  # [E, I, H]
    return out


def split_experts(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fused published keys -> per-expert published keys; other keys pass through."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        m = _FUSED.match(k)
        if not m:
            out[k] = v
        elif m["proj"] == "gate_up_proj":
            inter = v.shape[2] // 2
            for e in range(v.shape[0]):
                out[f"{m['p']}.{e}.gate_proj.weight"] = v[e, :, :inter].T.contiguous()  # [I, H]
                out[f"{m['p']}.{e}.up_proj.weight"] = v[e, :, inter:].T.contiguous()  # [I, H]
        else:
            for e in range(v.shape[0]):
                out[f"{m['p']}.{e}.down_proj.weight"] = v[e].T.contiguous()  # [H, I]
    return out


def to_published(state: Mapping[str, torch.Tensor], source: Source = "published") -> dict[str, torch.Tensor]:
    """Bring any supported form to fused published."""
    if source == "transformers":
        return transpose_fused_experts(state)
    if source != "published":
        raise ValueError(f"source must be 'published' or 'transformers', got {source!r}")
    return fuse_experts(state)


def _natural_key(name: str) -> list[int | str]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _split_into_shards(names: list[str], sizes: dict[str, int], shards: int) -> list[list[str]]:
    """Contiguous groups of roughly equal bytes, none empty."""
    if shards > len(names):
        raise ValueError(f"cannot split {len(names)} tensors into {shards} shards")
    total = sum(sizes.values())
    groups: list[list[str]] = [[] for _ in range(shards)]
    done = 0
    for i, name in enumerate(names):
        left = len(names) - i
        g = min(int(done * shards / total), shards - 1)
        g = max(g, shards - left)  # leave at least one tensor for every later shard
        while g > 0 and not groups[g - 1]:  # never skip a shard
            g -= 1
        groups[g].append(name)
        done += sizes[name]
    return groups


def write_published(
    state: Mapping[str, torch.Tensor],
    out_dir: str | Path,
    *,
    source: Source = "published",
    expert_layout: ExpertLayout = "fused",
    shards: int = 1,
    dtype: str | torch.dtype | None = None,
    tie_word_embeddings: bool = False,
) -> list[Path]:
    """Save ``state`` as published safetensors in ``out_dir``; return the files written.

    ``source="transformers"`` takes ``model.state_dict()`` of a transformers 5 model as is.
    With ``tie_word_embeddings`` any ``lm_head.weight`` is dropped, as the published files do.
    Stale weight files of an earlier write to the same folder are removed first.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = to_published(state, source)
    if tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    if expert_layout == "per-expert":
        tensors = split_experts(tensors)
    elif expert_layout != "fused":
        raise ValueError(f"expert_layout must be 'fused' or 'per-expert', got {expert_layout!r}")
    torch_dtype = _DTYPES[dtype] if isinstance(dtype, str) else dtype
    # Detached, contiguous and unshared: safetensors refuses tensors that share storage.
    tensors = {
        k: (v.to(torch_dtype) if torch_dtype is not None else v).detach().contiguous().clone()
        for k, v in tensors.items()
    }

    for stale in [*out_dir.glob("model*.safetensors"), out_dir / INDEX_NAME]:
        stale.unlink(missing_ok=True)
    names = sorted(tensors, key=_natural_key)
    if shards == 1:
        path = out_dir / SINGLE_NAME
        save_file({k: tensors[k] for k in names}, str(path), metadata={"format": "pt"})
        return [path]

    sizes = {k: tensors[k].numel() * tensors[k].element_size() for k in names}
    weight_map: dict[str, str] = {}
    paths = []
    for i, group in enumerate(_split_into_shards(names, sizes, shards)):
        path = out_dir / f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: tensors[k] for k in group}, str(path), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, path.name))
        paths.append(path)
    index = {
        "metadata": {
            "total_parameters": sum(t.numel() for t in tensors.values()),
            "total_size": sum(sizes.values()),
        },
        "weight_map": dict(sorted(weight_map.items())),
    }
    (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return [*paths, out_dir / INDEX_NAME]


def weight_files(ckpt_dir: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint folder, from its index when it has one."""
    ckpt_dir = Path(ckpt_dir)
    index = ckpt_dir / INDEX_NAME
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [ckpt_dir / n for n in names]
    return [ckpt_dir / SINGLE_NAME]


def read_published(ckpt_dir: str | Path, *, fuse: bool = True) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder as stored; with ``fuse`` per-expert keys become fused."""
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(ckpt_dir):
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                state[k] = f.get_tensor(k)
    return fuse_experts(state) if fuse else state


def relayout_checkpoint(src: str | Path, dst: str | Path, **write_options: object) -> Path:
    """Copy checkpoint ``src`` to ``dst`` with its weights rewritten by ``write_published(**write_options)``.

    E.g. ``relayout_checkpoint(a, b, expert_layout="per-expert", shards=2)``: same weights, other files.
    """
    src, dst = Path(src), Path(dst)
    shutil.copytree(
        src, dst, ignore=shutil.ignore_patterns("model*.safetensors", INDEX_NAME), dirs_exist_ok=True
    )
    write_published(read_published(src), dst, **write_options)  # type: ignore[arg-type]
    return dst
