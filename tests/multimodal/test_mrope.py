"""MRoPE positions against transformers' Qwen3VLMoeModel.get_rope_index and its decode-time positions."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, Qwen3VLMoeConfig
from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import Qwen3VLMoeModel

from shared.multimodal.chat_template import bundled_chat_template
from shared.multimodal.mrope import decode_positions, mrope_layout, mrope_positions
from shared.multimodal.prompt import PromptBuilder

pytestmark = pytest.mark.unit

IMAGE_TOKEN_ID = 151655
MERGE = 2


@pytest.fixture(scope="module")
def hf_model() -> Qwen3VLMoeModel:
    """A tiny Qwen3-VL-MoE; only its position code is used."""
    config = Qwen3VLMoeConfig(
        text_config={
            "vocab_size": 151936,
            "hidden_size": 16,
            "intermediate_size": 32,
            "moe_intermediate_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 8,
            "num_experts": 2,
            "num_experts_per_tok": 1,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_heads": 2,
            "out_hidden_size": 16,
            "patch_size": 16,
            "spatial_merge_size": MERGE,
            "deepstack_visual_indexes": [],
            "num_position_embeddings": 16,
        },
    )
    assert config.image_token_id == IMAGE_TOKEN_ID
    return Qwen3VLMoeModel(config).eval()


@pytest.fixture(scope="module")
def builder(qwen_tokenizer) -> PromptBuilder:
    return PromptBuilder(qwen_tokenizer, bundled_chat_template(), merge_size=MERGE)


def image(text: str = "") -> list[dict]:
    return [{"type": "image"}] + ([{"type": "text", "text": text}] if text else [])


PROMPTS = {
    "no image": ([{"role": "user", "content": "Tell me a joke about rotary embeddings."}], []),
    "one image": ([{"role": "user", "content": image("Describe it.")}], [(1, 6, 10)]),
    "one tall image": (
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": image("Tall?")}],
        [(1, 16, 4)],
    ),
    "three images": (
        [
            {"role": "user", "content": [{"type": "text", "text": "A:"}, *image(" B:"), *image()]},
            {"role": "assistant", "content": "Two pictures."},
            {"role": "user", "content": image("and a third, ending the prompt")},
        ],
        [(1, 4, 8), (1, 12, 6), (1, 2, 2)],
    ),
}


def hf_rope(model: Qwen3VLMoeModel, ids: list[int], grids: list[tuple[int, int, int]]):
    input_ids = torch.tensor([ids])
    mm = (input_ids == IMAGE_TOKEN_ID).int()
    grid = torch.tensor(grids) if grids else None
    return model.get_rope_index(input_ids, mm, image_grid_thw=grid)


@pytest.mark.parametrize("name", list(PROMPTS))
def test_prompt_positions_match_get_rope_index(name: str, builder: PromptBuilder, hf_model) -> None:
    messages, grids = PROMPTS[name]
    prompt = builder.build(messages, grids)

    positions, delta = mrope_positions(prompt.input_ids, grids, IMAGE_TOKEN_ID, MERGE)
    ref_positions, ref_delta = hf_rope(hf_model, prompt.input_ids, grids)

    assert positions.dtype == torch.long and positions.shape == (3, len(prompt.input_ids))
    assert torch.equal(positions, ref_positions[:, 0])
    assert delta == int(ref_delta)
    print(f"{name}: {len(prompt.input_ids)} tokens, delta {delta}")

    # Any chunk of the prompt gives the same positions as slicing the whole.
    layout = mrope_layout(prompt.input_ids, grids, IMAGE_TOKEN_ID, MERGE)
    bounds = sorted(
        {0, 1, 7, len(prompt.input_ids) // 2, len(prompt.input_ids)} | {s for s, _ in prompt.image_spans}
    )
    for start in bounds:
        for end in bounds:
            if start <= end:
                assert torch.equal(layout.positions(start, end), positions[:, start:end])


def test_raw_ids_with_adjacent_text_runs(hf_model) -> None:
    v0, v1, pad = 151652, 151653, IMAGE_TOKEN_ID
    ids = [5, v0] + [pad] * 6 + [v1, v0] + [pad] * 12 + [v1] + list(range(100, 110))
    grids = [(1, 4, 6), (1, 8, 6)]
    positions, delta = mrope_positions(torch.tensor(ids), torch.tensor(grids), pad, MERGE)
    ref_positions, ref_delta = hf_rope(hf_model, ids, grids)
    assert torch.equal(positions, ref_positions[:, 0]) and delta == int(ref_delta)


@pytest.mark.parametrize("name", ["no image", "three images"])
def test_decode_positions_match_generation(name: str, builder: PromptBuilder, hf_model) -> None:
    messages, grids = PROMPTS[name]
    ids = builder.build(messages, grids).input_ids
    _, delta = mrope_positions(ids, grids, IMAGE_TOKEN_ID, MERGE)

    # What generate() does after the prompt: the model keeps rope_deltas from the prefill and
    # offsets cache positions by it for every new token.
    input_ids = torch.tensor([ids])
    mm = (input_ids == IMAGE_TOKEN_ID).int()
    hf_model.rope_deltas = None
    hf_model.compute_3d_position_ids(
        input_ids, None, image_grid_thw=torch.tensor(grids) if grids else None, mm_token_type_ids=mm
    )
    if not grids:  # text-only prompts: generate() sets a zero delta
        hf_model.rope_deltas = torch.zeros(1, 1, dtype=torch.long)
    for cached, new in ((len(ids), 1), (len(ids) + 5, 1), (len(ids) + 9, 3)):
        cache = DynamicCache()
        kv = torch.zeros(1, 1, cached, 8)
        cache.update(kv, kv, 0)
        ref = hf_model.compute_3d_position_ids(
            torch.zeros(1, new, dtype=torch.long), torch.zeros(1, new, 16), cache=cache
        )
        assert torch.equal(decode_positions(cached, new, delta), ref[:, 0])


def test_mismatches_are_errors() -> None:
    pad = IMAGE_TOKEN_ID
    with pytest.raises(ValueError, match="1 images but 2 image grids"):
        mrope_positions([1, pad, pad, pad, pad, 2], [(1, 4, 4), (1, 4, 4)], pad, MERGE)
    with pytest.raises(ValueError, match="more images than the 0"):
        mrope_positions([1, pad, 2], [], pad, MERGE)
    with pytest.raises(ValueError, match="needs 4 consecutive"):
        mrope_positions([1, pad, pad, 2], [(1, 4, 4)], pad, MERGE)
    with pytest.raises(ValueError, match="outside the prompt"):
        mrope_layout([1, 2, 3], [], pad, MERGE).positions(2, 5)
