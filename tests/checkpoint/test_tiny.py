"""Tiny checkpoints load in transformers 5 exactly as the published ones do."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeForConditionalGeneration,
)

from shared.checkpoint.layout import INDEX_NAME, read_published, transpose_fused_experts, write_published
from shared.checkpoint.tiny import (
    TinySpec,
    cached_tiny_checkpoint,
    main,
    make_tiny_checkpoint,
    relayout_checkpoint,
    tiny_state,
)
from shared.checkpoint.tiny_weights import num_params, text_shapes, vision_shapes
from tests.numerics import assert_close_scaled

pytestmark = pytest.mark.unit

L0 = "model.language_model.layers.0"


def _load(path: Path, cls=Qwen3VLMoeForConditionalGeneration):
    model, info = cls.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set(), info
    assert not info["mismatched_keys"] and not info["error_msgs"], info
    return model.eval()


def _assert_state_matches_file(model, path: Path) -> None:
    memory = model.state_dict()
    on_disk = transpose_fused_experts(read_published(path))  # to transformers' in-memory orientation
    if model.config.tie_word_embeddings:
        assert "lm_head.weight" not in on_disk
        on_disk["lm_head.weight"] = on_disk["model.language_model.embed_tokens.weight"]
    assert set(memory) == set(on_disk)
    for k, v in on_disk.items():
        assert torch.equal(memory[k], v.to(memory[k].dtype)), k


def test_default_checkpoint_is_published_layout_and_loads(tiny_checkpoint) -> None:
    path = tiny_checkpoint()
    cfg = json.loads((path / "config.json").read_text())
    t, v = cfg["text_config"], cfg["vision_config"]
    assert cfg["architectures"] == ["Qwen3VLMoeForConditionalGeneration"]
    assert (cfg["model_type"], t["model_type"]) == ("qwen3_vl_moe", "qwen3_vl_moe_text")
    assert t["rope_scaling"] == {
        "mrope_interleaved": True,
        "mrope_section": [4, 2, 2],
        "rope_type": "default",
    }
    assert sum(t["rope_scaling"]["mrope_section"]) == t["head_dim"] // 2
    assert v["out_hidden_size"] == t["hidden_size"] and v["deepstack_visual_indexes"] == [0, 1]

    files = read_published(path, fuse=False)
    assert files[f"{L0}.mlp.experts.gate_up_proj"].shape == (8, 64, 96)  # [E, H, 2I]
    assert files[f"{L0}.mlp.experts.down_proj"].shape == (8, 48, 64)  # [E, I, H]
    assert files[f"{L0}.mlp.gate.weight"].shape == (8, 64)
    assert files["model.visual.patch_embed.proj.weight"].shape == (32, 3, 2, 16, 16)
    assert "lm_head.weight" in files

    model = _load(path)
    assert model.model.language_model.layers[0].mlp.experts.gate_up_proj.shape == (8, 96, 64)
    _assert_state_matches_file(model, path)
    assert model.config.image_token_id == AutoTokenizer.from_pretrained(path).convert_tokens_to_ids(
        "<|image_pad|>"
    )
    assert model.config.text_config.rope_parameters["mrope_section"] == [4, 2, 2]

    total = sum(f.stat().st_size for f in path.iterdir())
    print(f"default checkpoint: {total / 1e6:.2f} MB in {len(list(path.iterdir()))} files")
    assert total < 5e6


def test_published_expert_orientation_matches_transformers(tiny_checkpoint) -> None:
    """gate_up_proj columns [:I] are the gate, [I:] the up projection, as transformers computes them."""
    path = tiny_checkpoint()
    experts = _load(path).model.language_model.layers[0].mlp.experts
    per_expert = read_published(tiny_checkpoint(expert_layout="per-expert"), fuse=False)
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(0))
    for e in (0, 5):
        w = {p: per_expert[f"{L0}.mlp.experts.{e}.{p}_proj.weight"] for p in ("gate", "up", "down")}
        want = (torch.nn.functional.silu(x @ w["gate"].T) * (x @ w["up"].T)) @ w["down"].T
        got = experts(x, torch.full((5, 1), e), torch.ones(5, 1))
        # transformers' expert kernel vs three plain matmuls: fp32 round-off, scaled to the outputs.
        assert_close_scaled(got, want, name=f"expert {e}")


def test_activations_are_nontrivial(tiny_checkpoint) -> None:
    path = tiny_checkpoint()
    model, tok = _load(path), AutoTokenizer.from_pretrained(path)
    ids = tok("The quick brown fox jumps over the lazy dog and the cat", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model(ids, output_router_logits=True)
        gen = model.generate(ids, max_new_tokens=10, do_sample=False)[0, ids.shape[1] :]
    top1 = out.logits[0].topk(2).values
    print(f"logit std {out.logits.std():.2f}, min top1-top2 gap {(top1[:, 0] - top1[:, 1]).min():.4f}")
    print(f"greedy: {gen.tolist()}")
    assert out.logits.std() > 1.0
    assert len(set(gen.tolist())) >= 4 and gen.max() < len(tok)  # padding rows never win
    for layer_logits in out.router_logits:
        chosen = layer_logits.topk(2).indices  # [T, k]
        assert len(set(chosen[:, 0].tolist())) >= 3 and len(set(chosen.flatten().tolist())) >= 5


def test_image_forward_with_deepstack(tiny_checkpoint) -> None:
    path = tiny_checkpoint(min_pixels=64 * 64)
    pre = json.loads((path / "preprocessor_config.json").read_text())
    assert pre["size"] == {"longest_edge": 16777216, "shortest_edge": 4096}
    from PIL import Image

    image = Image.linear_gradient("L").convert("RGB").resize((64, 96))
    pixels = AutoImageProcessor.from_pretrained(path)(images=[image], return_tensors="pt")
    assert pixels["image_grid_thw"].tolist() == [[1, 6, 4]]
    model, tok = _load(path), AutoTokenizer.from_pretrained(path)
    n = int(pixels["image_grid_thw"].prod()) // 4
    ids = tok(
        f"Look: <|vision_start|>{'<|image_pad|>' * n}<|vision_end|> what?", return_tensors="pt"
    ).input_ids
    assert int((ids == model.config.image_token_id).sum()) == n
    with torch.no_grad():
        feats = model.model.get_image_features(pixels["pixel_values"], pixels["image_grid_thw"])
        # transformers 5 wants the processor's modality ids (1 = image token) to build M-RoPE positions
        mm_types = (ids == model.config.image_token_id).int()
        logits = model(ids, mm_token_type_ids=mm_types, **pixels).logits
    assert feats.pooler_output[0].shape == (n, 64) and len(feats.deepstack_features) == 2
    assert 0.2 < feats.pooler_output[0].std() < 5 and torch.isfinite(logits).all()


@pytest.mark.parametrize(
    "fields",
    [dict(dense=True, tie_word_embeddings=True), dict(dense=True, shards=2, dtype="bfloat16")],
    ids=["dense-tied", "dense-bf16-sharded"],
)
def test_dense_variants_load(tiny_checkpoint, fields) -> None:
    path = tiny_checkpoint(**fields)
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen3VLForConditionalGeneration"] and cfg["model_type"] == "qwen3_vl"
    assert "num_experts" not in cfg["text_config"]
    model = _load(path, Qwen3VLForConditionalGeneration)
    _assert_state_matches_file(model, path)
    assert ("lm_head.weight" in read_published(path)) != fields.get("tie_word_embeddings", False)


def test_moe_bf16_sharded_tied(tiny_checkpoint) -> None:
    path = tiny_checkpoint(shards=3, dtype="bfloat16", tie_word_embeddings=True, mlp_only_layers=(1,))
    index = json.loads((path / INDEX_NAME).read_text())
    shard_names = sorted(set(index["weight_map"].values()))
    assert shard_names == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert not (path / "model.safetensors").exists()
    state = read_published(path)
    assert set(index["weight_map"]) == set(state)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in state.values())
    assert {t.dtype for t in state.values()} == {torch.bfloat16}
    assert "model.language_model.layers.1.mlp.gate_proj.weight" in state  # the dense layer
    _, fp32 = tiny_state(tie_word_embeddings=True, mlp_only_layers=(1,))
    assert all(torch.equal(state[k], v.to(torch.bfloat16)) for k, v in fp32.items())
    model = _load(path)
    _assert_state_matches_file(model, path)
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()


def test_transformers_state_dict_rewritten_in_both_layouts(tiny_checkpoint, tmp_path) -> None:
    src = tiny_checkpoint()
    model = _load(src)
    for layout in ("fused", "per-expert"):
        write_published(model.state_dict(), tmp_path / layout, source="transformers", expert_layout=layout)
    original = read_published(src)
    for layout in ("fused", "per-expert"):
        again = read_published(tmp_path / layout)
        assert set(again) == set(original) and all(torch.equal(again[k], original[k]) for k in original)
    assert any(
        ".experts.7.down_proj.weight" in k for k in read_published(tmp_path / "per-expert", fuse=False)
    )


def test_relayout_keeps_weights_and_other_files(tiny_checkpoint, tmp_path) -> None:
    src = tiny_checkpoint()
    dst = relayout_checkpoint(src, tmp_path / "r", expert_layout="per-expert", shards=2)
    assert sorted(p.name for p in dst.glob("model-*")) == [
        f"model-0000{i}-of-00002.safetensors" for i in (1, 2)
    ]
    assert (dst / "config.json").read_text() == (src / "config.json").read_text()
    a, b = read_published(src), read_published(dst)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_deterministic_and_seeded(tiny_checkpoint, tmp_path) -> None:
    def digest(path: Path) -> dict[str, str]:
        return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir())}

    assert digest(make_tiny_checkpoint(tmp_path / "a")) == digest(tiny_checkpoint())
    other = read_published(tiny_checkpoint(seed=1))
    assert not torch.equal(
        other[f"{L0}.mlp.gate.weight"], read_published(tiny_checkpoint())[f"{L0}.mlp.gate.weight"]
    )


def test_text_to_vision_ratio_grows_only_the_language_part(tiny_checkpoint) -> None:
    path = tiny_checkpoint(text_to_vision_ratio=20)
    cfg = json.loads((path / "config.json").read_text())
    spec = TinySpec(num_hidden_layers=cfg["text_config"]["num_hidden_layers"], vocab_size=1088)
    vision, text = num_params(vision_shapes(spec)), num_params(text_shapes(spec))
    print(f"ratio 20: {spec.num_hidden_layers} layers, vision {vision:,} / language {text:,} params")
    assert 20 * vision <= text < 22 * vision
    big, small = read_published(path), read_published(tiny_checkpoint())
    assert all(torch.equal(big[k], v) for k, v in small.items() if k.startswith("model.visual."))


@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(moe_intermediate_size=32), "moe_intermediate_size"),  # hidden 64 == 2 * 32
        (dict(num_position_embeddings=60), "perfect square"),
        (dict(deepstack_visual_indexes=(0, 3)), "deepstack"),
        (dict(mrope_section=(4, 4, 4)), "mrope_section"),
        (dict(dtype="float16"), "dtype"),
    ],
)
def test_bad_specs_are_refused(fields, match) -> None:
    with pytest.raises(ValueError, match=match):
        TinySpec(**fields)


def test_missing_chat_template_fails_clearly(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="chat template"):
        make_tiny_checkpoint(tmp_path / "x", chat_template_path=str(tmp_path / "nope.jinja"))
    with pytest.raises(FileNotFoundError, match="chat template"):
        cached_tiny_checkpoint(tmp_path, chat_template_path=str(tmp_path / "nope.jinja"))


def test_cli(tmp_path, capsys) -> None:
    argv = [
        str(tmp_path / "c"),
        "--dense",
        "--layers",
        "3",
        "--shards",
        "2",
        "--mrope-section",
        "2",
        "3",
        "3",
    ]
    assert main(argv) == 0
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    assert cfg["text_config"]["num_hidden_layers"] == 3
    assert cfg["text_config"]["rope_scaling"]["mrope_section"] == [2, 3, 3]
    assert (tmp_path / "c" / INDEX_NAME).exists()
    assert main([str(tmp_path / "d"), "--moe-intermediate-size", "64"]) == 2
    assert "must differ" in capsys.readouterr().err
