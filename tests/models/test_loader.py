"""Checkpoint loading: expert layouts, shards, dtypes, tied embeddings, and clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from shared.models import loader
from shared.models.loader import CheckpointError, load_model

pytestmark = pytest.mark.unit

EXPERTS = "model.language_model.layers.0.mlp.experts.gate_up_proj"


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.state_dict().items()}


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_per_expert_and_fused_layouts_load_identically(tiny_checkpoint):
    fused = state(load_model(tiny_checkpoint(), dtype="float32"))
    per_expert_dir = tiny_checkpoint(expert_layout="per-expert")
    assert any("experts.0.gate_proj" in k for k in load_file(per_expert_dir / "model.safetensors"))
    per_expert = state(load_model(per_expert_dir, dtype="float32"))
    assert fused.keys() == per_expert.keys()
    for key in fused:
        assert torch.equal(fused[key], per_expert[key]), key


def test_sharded_bf16_and_tied_checkpoints_load(tiny_checkpoint):
    reference = state(load_model(tiny_checkpoint(), dtype="float32"))
    sharded = load_model(tiny_checkpoint(shards=3, dtype="bfloat16"), dtype="auto")
    assert sharded.model.embed_tokens.weight.dtype == torch.bfloat16
    for key, value in state(sharded).items():
        assert torch.equal(value, reference[key].to(torch.bfloat16)), key
    tied = load_model(tiny_checkpoint(tie_word_embeddings=True), dtype="float32")
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    dense = load_model(tiny_checkpoint(dense=True), dtype="float32")
    assert not dense.config.is_moe and "mlp.gate_proj.weight" in " ".join(state(dense))


def test_each_part_reads_only_its_own_tensors(tiny_checkpoint, monkeypatch):
    ckpt = tiny_checkpoint(shards=2)
    read: list[str] = []
    real = loader.read_tensors

    def spy(path, keys, dtype, device):
        read.extend(keys)
        return real(path, keys, dtype, device)

    monkeypatch.setattr(loader, "read_tensors", spy)
    load_model(ckpt, parts={"vision"})
    assert read and all(k.startswith("model.visual.") for k in read)
    read.clear()
    load_model(ckpt, parts={"language"})
    assert read and not any(k.startswith("model.visual.") for k in read)
    assert any(k.startswith("lm_head.") for k in read)


def test_truncated_file_names_the_file(tiny_checkpoint, tmp_path):
    ckpt = copy(tiny_checkpoint(), tmp_path / "ckpt")
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*truncated"):
        load_model(ckpt)


def rewrite(ckpt: Path, change) -> None:
    weights = ckpt / "model.safetensors"
    tensors = load_file(weights)
    change(tensors)
    save_file(tensors, weights)


def test_missing_key_is_named(tiny_checkpoint, tmp_path):
    ckpt = copy(tiny_checkpoint(), tmp_path / "ckpt")
    rewrite(ckpt, lambda t: t.pop("model.language_model.layers.1.self_attn.k_norm.weight"))
    with pytest.raises(
        CheckpointError, match=r"missing key 'model\.language_model\.layers\.1\.self_attn\.k_norm"
    ):
        load_model(ckpt)
    # The vision half does not need that key.
    assert load_model(ckpt, parts={"vision"}).visual is not None


def test_wrong_shape_names_key_and_file(tiny_checkpoint, tmp_path):
    ckpt = copy(tiny_checkpoint(), tmp_path / "ckpt")
    rewrite(ckpt, lambda t: t.update({EXPERTS: t[EXPERTS][:, :, :-2].contiguous()}))
    with pytest.raises(CheckpointError, match=rf"model\.safetensors: key '{EXPERTS}' has shape"):
        load_model(ckpt)


def test_unexpected_key_is_named(tiny_checkpoint, tmp_path):
    ckpt = copy(tiny_checkpoint(), tmp_path / "ckpt")
    rewrite(ckpt, lambda t: t.update({"model.language_model.layers.0.mlp.bogus": torch.zeros(2)}))
    with pytest.raises(
        CheckpointError, match=r"unexpected key 'model\.language_model\.layers\.0\.mlp\.bogus'"
    ):
        load_model(ckpt)


def test_unknown_model_type_and_missing_files(tiny_checkpoint, tmp_path):
    ckpt = copy(tiny_checkpoint(), tmp_path / "ckpt")
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps(config | {"model_type": "llama"}))
    with pytest.raises(CheckpointError, match=r"config\.json: model_type 'llama' is not supported"):
        load_model(ckpt)
    with pytest.raises(CheckpointError, match="config.json: not found"):
        load_model(tmp_path)
    sharded = copy(tiny_checkpoint(shards=2), tmp_path / "sharded")
    next(sharded.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match=r"shard model-00002-of-00002\.safetensors .* does not exist"):
        load_model(sharded)
