"""The MoE language model against transformers: prompt logits, greedy continuation, packing, chunks."""

from __future__ import annotations

import pytest
import torch

from shared.models.language import DeepstackInput
from shared.models.layers.attention import ContiguousAttention, SequenceKV
from tests.models.conftest import CONVERSATIONS
from tests.models.runner import greedy, image_inputs, prompt_logits
from tests.numerics import assert_close_scaled

pytestmark = pytest.mark.parity


def hf_inputs(ids, pixels, grids, image_token_id):
    kwargs = {"input_ids": ids[None], "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
    kwargs["mm_token_type_ids"] = (ids == image_token_id).int()[None]
    if grids:
        kwargs |= {"pixel_values": pixels, "image_grid_thw": torch.tensor(grids)}
    return kwargs


def features_for(model, pixels, grids):
    return model.get_image_feature(pixels, grids) if grids else []


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_prompt_logits_match_transformers(name, prompts, ours, hf):
    ids, positions, pixels, grids = prompts[name]
    logits = prompt_logits(ours, ids, positions, features_for(ours, pixels, grids))
    with torch.no_grad():
        ref = hf(**hf_inputs(ids, pixels, grids, ours.config.image_token_id)).logits[0]
    assert logits.shape == ref.shape
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_greedy_continuation_matches_generate(name, prompts, ours, hf):
    ids, positions, pixels, grids = prompts[name]
    tokens = greedy(ours, ids, positions, features_for(ours, pixels, grids), max_new_tokens=32)
    with torch.no_grad():
        out = hf.generate(
            **hf_inputs(ids, pixels, grids, ours.config.image_token_id), max_new_tokens=32, do_sample=False
        )
    ref = out[0, len(ids) :].tolist()
    # transformers stops early only at an end-of-sequence token; we always run 32 steps.
    assert len(ref) == 32 or ref[-1] in ours.config.eos_token_ids
    assert tokens[: len(ref)] == ref


def test_packed_batch_equals_sequences_run_alone(prompts, ours):
    """Three prompts of different lengths in one forward give each one's own logits."""
    names = list(CONVERSATIONS)
    cfg = ours.config.text
    embeds, positions, indices, deepstacks, lens, offset = [], [], [], [], [], 0
    for name in names:
        ids, pos, pixels, grids = prompts[name]
        e, ds = image_inputs(ours, ids, features_for(ours, pixels, grids))
        embeds.append(e)
        positions.append(pos)
        lens.append(len(ids))
        if ds is not None:
            indices.append(ds.index + offset)
            deepstacks.append(ds.embeds)
        offset += len(ids)
    deepstack = DeepstackInput(torch.cat(indices), torch.cat(deepstacks, dim=1))
    caches = [SequenceKV(cfg.num_hidden_layers) for _ in names]
    attn = ContiguousAttention(caches, lens, cfg.head_dim**-0.5)
    with torch.inference_mode():
        packed = ours.compute_logits(ours(torch.cat(embeds), torch.cat(positions, 1), attn, deepstack))
    for name, part in zip(names, packed.split(lens), strict=True):
        ids, pos, pixels, grids = prompts[name]
        alone = prompt_logits(ours, ids, pos, features_for(ours, pixels, grids))
        # Packing changes the row count of every GEMM: fp32 round-off, scaled to the logits.
        assert_close_scaled(part, alone, name=f"{name}: packed vs alone logits")


def test_chunked_prefill_with_an_image_across_the_boundary(prompts, ours):
    """A prompt run in chunks that cut an image in two gives the same logits as one pass."""
    ids, positions, pixels, grids = prompts["three_images"]
    embeds, ds = image_inputs(ours, ids, features_for(ours, pixels, grids))
    image_positions = ds.index.tolist()
    cuts = [image_positions[len(image_positions) // 2], image_positions[-3], len(ids) - 1]
    assert cuts == sorted(cuts)
    cache = SequenceKV(ours.config.text.num_hidden_layers)
    scale = ours.config.text.head_dim**-0.5
    pieces, start = [], 0
    with torch.inference_mode():
        for end in [*cuts, len(ids)]:
            inside = (ds.index >= start) & (ds.index < end)
            chunk_ds = DeepstackInput(ds.index[inside] - start, ds.embeds[:, inside])
            attn = ContiguousAttention([cache], [end - start], scale)
            hidden = ours(embeds[start:end], positions[:, start:end], attn, chunk_ds)
            pieces.append(ours.compute_logits(hidden))
            start = end
    whole = prompt_logits(ours, ids, positions, features_for(ours, pixels, grids))
    # Chunks sum attention and GEMMs in another order than one pass: fp32 round-off, scaled.
    assert_close_scaled(torch.cat(pieces), whole, name="chunked vs one-pass logits")
