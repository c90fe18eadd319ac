"""Stress: 500 random requests with random aborts on a pool far too small to hold them at once.

Requests arrive a few per step, with random prompt lengths (some sharing prefixes, some with an
image), random max_tokens and, for a quarter of them, an abort at a random later step (waiting,
mid-prefill, decoding or already finished: whatever it is by then). Every request must end as
asked, the engine must never raise, the pool's free block count must come back to full, and
requests that ran to the end must produce the tokens they produce on an unconstrained engine.
"""

from __future__ import annotations

import random

import pytest
import torch

from shared.engine import Engine, EngineConfig, FinishReason, ImageInput, Request, SamplingParams
from shared.multimodal.mrope import mrope_positions

# In-process but ~20 s for 500 requests: kept out of `make test-fast`.
pytestmark = pytest.mark.slow

NUM_REQUESTS = 500
NUM_BLOCKS = 48  # 192 tokens: room for one or two of the longest requests


def image_request(rid: str, rng: random.Random, lm, params: SamplingParams, pictures) -> Request:
    cfg = lm.config
    content_hash, grid, embeds, deepstack = rng.choice(pictures)
    before = [rng.randrange(1000) for _ in range(rng.randint(0, 40))]
    after = [rng.randrange(1000) for _ in range(rng.randint(1, 40))]
    n = embeds.shape[0]
    ids = [*before, cfg.vision_start_token_id, *[cfg.image_token_id] * n, cfg.vision_end_token_id, *after]
    pos, delta = mrope_positions(ids, [grid], cfg.image_token_id, cfg.vision.spatial_merge_size)
    return Request(
        rid, ids, params, pos, delta, [ImageInput(embeds, deepstack, content_hash, len(before) + 1)]
    )


def make_requests(lm, rng: random.Random) -> list[tuple[Request, int | None]]:
    """(request, abort delay in steps or None)."""
    hidden, levels = lm.config.text.hidden_size, lm.config.num_deepstack_levels
    g = torch.Generator().manual_seed(0)
    pictures = [
        (
            f"img{i}",
            (1, 4, 8),
            torch.randn(8, hidden, generator=g),
            torch.randn(levels, 8, hidden, generator=g),
        )
        for i in range(3)
    ]
    prefixes = [[rng.randrange(1000) for _ in range(24)] for _ in range(4)]
    out = []
    for i in range(NUM_REQUESTS):
        params = SamplingParams(temperature=0, max_tokens=rng.randint(1, 24), ignore_eos=rng.random() < 0.5)
        kind = rng.random()
        if kind < 0.15:
            req = image_request(f"r{i}", rng, lm, params, pictures)
        else:
            ids = [rng.randrange(1000) for _ in range(rng.randint(1, 96))]
            if kind < 0.45:
                ids = rng.choice(prefixes) + ids
            req = Request(f"r{i}", ids, params)
        out.append((req, rng.randint(0, 30) if rng.random() < 0.25 else None))
    return out


def test_random_requests_and_aborts_on_a_small_pool(lm):
    rng = random.Random(1)
    plan = make_requests(lm, rng)
    config = EngineConfig(
        block_size=4, num_blocks=NUM_BLOCKS, prefill_chunk_size=16, max_num_batched_tokens=48, max_num_seqs=12
    )
    engine = Engine(lm, config)
    outputs: dict[str, list] = {}
    aborted: set[str] = set()
    abort_at: dict[int, list[str]] = {}
    pending = list(plan)
    step = 0
    while pending or engine.has_unfinished():
        for _ in range(min(len(pending), rng.randint(0, 3))):
            req, delay = pending.pop(0)
            engine.add_request(req)
            outputs[req.request_id] = []
            if delay is not None:
                abort_at.setdefault(step + delay, []).append(req.request_id)
        for rid in abort_at.pop(step, []):
            if engine.abort(rid):
                aborted.add(rid)
        for out in engine.step():
            assert out.request_id not in aborted
            outputs[out.request_id].append(out)
        step += 1
        assert step < 20_000, "no progress"
    assert engine.num_free_blocks == NUM_BLOCKS
    assert not engine.seqs and engine.blocks.allocator.num_free == NUM_BLOCKS
    finished = {}
    for req, delay in plan:
        outs = outputs[req.request_id]
        if req.request_id in aborted:
            assert delay is not None and not any(o.finished for o in outs)
            continue
        assert outs and outs[-1].finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
        assert not any(o.finished for o in outs[:-1])
        assert len(outs) == req.params.max_tokens or outs[-1].finish_reason is FinishReason.STOP
        finished[req.request_id] = [o.token_id for o in outs]
    print(
        f"\n{len(plan)} requests in {step} steps: {len(finished)} finished, {len(aborted)} aborted, "
        f"{engine.scheduler.num_preemptions} preemptions, "
        f"{engine.scheduler.num_cached_tokens}/{engine.scheduler.num_prompt_tokens} prompt tokens from the cache"
    )
    assert (
        len(aborted) > 50 and engine.scheduler.num_preemptions > 50 and engine.scheduler.num_cached_tokens > 0
    )
    # No sequence was corrupted by another: rerun on a roomy engine, they give the same tokens.
    rerun = [req for req, _ in plan if req.request_id in finished]
    roomy = Engine(lm, EngineConfig(num_blocks=4096, max_num_seqs=128, enable_prefix_cache=False))
    assert roomy.generate(rerun) == finished
