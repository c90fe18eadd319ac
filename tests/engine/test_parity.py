"""Greedy outputs of the engine equal transformers' ``generate``: 16 mixed prompts run concurrently.

Prompts of 5 to 600 tokens with 0 to 3 images, different max_tokens, the prefill chunk forced to
64 tokens (images cross chunk boundaries), with the prefix cache off and on. With the cache on,
half the prompts arrive after the first half's prompts are cached; among them prompts sharing an
image prefix, an identical prompt, and one with the same tokens but a different image. The
paged attention runs gathered (the reference) or in place (FlexAttention), eager or compiled.
"""

from __future__ import annotations

import pytest

from shared.engine import Engine, EngineConfig, SamplingParams
from tests.engine.prompts import Picture, build, hf_generate, request, text

pytestmark = pytest.mark.parity

X = Picture((1, 16, 16), seed=1)  # 64 tokens
Y = Picture((1, 16, 16), seed=2)  # same size as X, other pixels
SMALL = Picture((1, 8, 8), seed=3)  # 16 tokens
WIDE = Picture((1, 12, 20), seed=4)  # 60 tokens
TALL = Picture((1, 4, 28), seed=5)  # 28 tokens
PRE, POST, T128 = text(100, seed=100), text(30, seed=101), text(128, seed=102)

# (pieces, max_tokens, wave): pieces as in tests.engine.prompts.build; wave 2 arrives later.
CASES = [
    ([5], 7, 1),
    ([600], 12, 1),
    ([PRE, X, POST, 40], 10, 1),
    ([PRE, X, POST, 300], 5, 2),  # shares text, image and text with case 2
    ([PRE, Y, POST, 40], 9, 2),  # the same token ids as case 2, another image
    ([20, SMALL, 10, WIDE, 5, TALL, 30], 9, 1),
    ([X, 50, SMALL, 3], 16, 1),
    ([64], 3, 1),
    ([T128], 6, 1),
    ([T128], 8, 2),  # identical to case 8
    ([7, X, 40, X, 40, X, 200], 4, 2),
    ([230, X, 12], 6, 1),  # the image straddles the chunk boundary at 256
    ([450, WIDE, 20, SMALL, 2], 4, 2),
    ([17], 1, 1),
    ([PRE, X, POST, TALL, 10], 11, 2),
    ([333, WIDE, 100], 13, 2),
]


@pytest.fixture(scope="module")
def cases(lm, hf):
    prompts = [(build(pieces, lm.config, seed=i), m, wave) for i, (pieces, m, wave) in enumerate(CASES)]
    refs = [hf_generate(hf, p, lm.config, m) for p, m, _ in prompts]
    return prompts, refs


def _params(hf, max_tokens: int) -> SamplingParams:
    # transformers stops at its generation config's end tokens; stop at the same ones.
    stops = tuple(hf.generation_config.eos_token_id)
    return SamplingParams(temperature=0, max_tokens=max_tokens, stop_token_ids=stops)


@pytest.mark.parametrize(
    "prefix_cache,compiled,attention",
    [(False, False, "gather"), (True, False, "gather"), (True, True, "gather"), (True, True, "flex")],
    ids=["eager", "cache", "cache-compiled", "cache-flex-compiled"],
)
def test_greedy_matches_transformers(prefix_cache, compiled, attention, cases, lm, vision, hf):
    prompts, refs = cases
    cfg = lm.config
    lengths = sorted(len(p.ids) for p, _, _ in prompts)
    assert lengths[0] == 5 and lengths[-1] >= 600
    assert {len(p.pictures) for p, _, _ in prompts} == {0, 1, 2, 3}
    config = EngineConfig(
        block_size=16,
        num_blocks=600,
        prefill_chunk_size=64,
        max_num_batched_tokens=160,
        enable_prefix_cache=prefix_cache,
        compile_decode=compiled,  # decode-only steps through the compiled graph
        attention_backend=attention,  # flex: prefill chunks and mixed steps too, blocks read in place
    )
    engine = Engine(lm, config)
    reqs = [request(f"r{i}", p, cfg, vision, _params(hf, m)) for i, (p, m, _) in enumerate(prompts)]
    waves = [r for r, (_, _, w) in zip(reqs, prompts, strict=True) if w == 1 or not prefix_cache]
    later = [r for r in reqs if r not in waves]
    for r in waves:
        engine.add_request(r)
    outputs: dict[str, list[int]] = {r.request_id: [] for r in reqs}
    cached: dict[str, int] = {}
    while engine.has_unfinished() or later:
        if later and all(outputs[r.request_id] for r in waves):
            for r in later:
                engine.add_request(r)
            later = []
        for out in engine.step():
            outputs[out.request_id].append(out.token_id)
        for rid, seq in engine.seqs.items():
            cached[rid] = max(cached.get(rid, 0), seq.num_cached_tokens)
    for i, ref in enumerate(refs):
        assert outputs[f"r{i}"] == ref, f"prompt {i}"
    assert engine.num_free_blocks == config.num_blocks
    if compiled:
        assert engine.runner.graph is not None and engine.runner.graph.steps > 0
    if prefix_cache:
        image_start = prompts[2][0].starts[0]
        assert cached["r3"] >= (image_start + 64 + 30) // 16 * 16  # text, image X and text shared
        assert cached["r4"] <= image_start  # another image: nothing after its first token is shared
        assert cached["r4"] >= image_start // 16 * 16
        assert cached["r9"] == 112  # an identical 128-token prompt: all but the block of its last token
        assert engine.scheduler.num_cached_tokens > 0
    else:
        assert not cached or max(cached.values()) == 0
