"""The compiled decode step: the eager step's logits, padding rows that never touch real rows, one
graph for every batch size and table width (CPU), no graph breaks (``fullgraph=True``).

One engine per attention kernel (gather and cpu, the CPU's; flex, the GPU's): its graph is compiled once
(~20-70 s each on 2 cores); the tests then run batches of 1 to 6 rows (CUDA: buckets 2, 4 and 8) and
block tables 1 to 26 blocks wide through that one graph.
"""

from __future__ import annotations

import pytest
import torch

from shared.engine import Engine, EngineConfig, Request, SamplingParams
from shared.engine.decode_graph import META_COLUMNS
from shared.engine.scheduler import ScheduledSeq
from tests.numerics import assert_close_scaled

pytestmark = pytest.mark.slow

# Prompt lengths around block boundaries (block 16): the decoded token is the last slot of a
# block, the first of a new one, or in the middle; 300 makes a table wider than 16 blocks.
LENGTHS = [15, 16, 17, 31, 40]


@pytest.fixture(scope="module", params=["gather", "cpu", "flex"])
def engine(request, lm):
    config = EngineConfig(
        block_size=16,
        num_blocks=96,
        max_num_seqs=8,
        enable_prefix_cache=False,
        compile_decode=True,
        attention_backend=request.param,  # flex is the GPU's kernel: its math is proven here
    )
    engine = Engine(lm, config)
    assert engine.runner.graph is not None and engine.runner.graph.warmup_seconds > 0  # compiled at start
    return engine


def decoding(engine: Engine, lengths: list[int], tag: str) -> list[ScheduledSeq]:
    """Add prompts of these lengths, prefill them, and return the decode-only batch that follows."""
    g = torch.Generator().manual_seed(len(lengths))
    for i, n in enumerate(lengths):
        ids = torch.randint(3, 200, (n,), generator=g).tolist()
        engine.add_request(Request(f"{tag}{i}", ids, SamplingParams(temperature=0, max_tokens=50)))
    while any(s.num_computed_tokens < s.num_prompt_tokens for s in engine.seqs.values()):
        engine.step()
    batch = engine.scheduler.schedule().scheduled
    assert engine.runner.decode_only(batch) and len(batch) == len(lengths)
    return batch


def finish(engine: Engine) -> None:
    for rid in list(engine.seqs):
        engine.abort(rid)
    assert engine.num_free_blocks == engine.blocks.num_blocks


def test_compiled_step_equals_the_eager_step(engine):
    for lengths, tag in ((LENGTHS, "a"), ([300, 7], "b")):  # widths 3, 19 (CUDA: 16, 32; buckets 8, 2)
        batch = decoding(engine, lengths, tag)
        graph = engine.runner.graph
        compiled = graph.run(batch)
        with torch.inference_mode():
            eager = engine.runner._run_decode(batch)  # rewrites the same new K/V into the same slots
        assert compiled.shape == eager.shape == (len(batch), engine.model_config.text.vocab_size)
        assert_close_scaled(compiled, eager, name=f"compiled vs eager decode, lengths {lengths}")
        finish(engine)


def test_padding_rows_never_change_real_rows(engine):
    # CUDA pads 5 rows to bucket 8; the CPU runs a batch at its size, padding only 1 row to 2.
    cuda = engine.runner.graph.cuda
    batch = decoding(engine, LENGTHS if cuda else LENGTHS[:1], "p")
    graph = engine.runner.graph
    meta = graph.pack(batch)
    assert meta.shape[0] == (8 if cuda else 2)
    npad = meta.shape[0] - len(batch)
    pool_before = (engine.pool.k[:, : graph.sink].clone(), engine.pool.v[:, : graph.sink].clone())
    with torch.inference_mode():
        clean = graph._call(meta)[: len(batch)]
    pool_clean = (engine.pool.k[:, : graph.sink].clone(), engine.pool.v[:, : graph.sink].clone())
    g = torch.Generator().manual_seed(0)
    noisy = meta.clone()
    pad = slice(len(batch), None)
    bs = engine.pool.block_size
    noisy[pad, 0] = torch.randint(0, engine.model_config.text.vocab_size, (npad,), generator=g)  # tokens
    noisy[pad, 1] = torch.randint(10_000, 100_000, (npad,), generator=g)  # positions
    offsets = torch.randint(0, bs, (npad,), generator=g)
    noisy[pad, 2] = graph.sink * bs + offsets  # slots anywhere in the sink block
    noisy[pad, 5] = offsets  # and attending to all of it up to there
    with torch.inference_mode():
        dirty = graph._call(noisy)[: len(batch)]
    assert torch.equal(clean, dirty)
    # Only the real rows' new slots changed outside the sink, and the same way both times.
    changed = (engine.pool.k[:, : graph.sink] != pool_before[0]).flatten(3).any(-1).any(0)  # [blocks, block]
    slots = {int(s) for s in meta[: len(batch), 2]}
    assert {b * bs + o for b, o in changed.nonzero().tolist()} <= slots
    assert torch.equal(engine.pool.k[:, : graph.sink], pool_clean[0])
    assert torch.equal(engine.pool.v[:, : graph.sink], pool_clean[1])
    finish(engine)


def test_one_graph_serves_every_batch_size_and_width(engine):
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    for n, tag in ((2, "u"), (3, "v"), (6, "w")):
        batch = decoding(engine, [17 * (i + 1) for i in range(n)], tag)
        engine.runner.graph.run(batch)
        finish(engine)
    for lengths, tag in (
        ([400], "x"),
        ([5, 9], "y"),
    ):  # widths 26 and 2 (one block padded to 2; CUDA: 32, 16)
        batch = decoding(engine, lengths, tag)
        engine.runner.graph.run(batch)
        finish(engine)
    assert counters["stats"]["unique_graphs"] == graphs, "a batch size or table width recompiled"
    assert META_COLUMNS == 6


def _greedy(engine: Engine, prompts: list[list[int]]) -> dict[str, list[int]]:
    for i, ids in enumerate(prompts):
        engine.add_request(
            Request(f"g{i}", ids, SamplingParams(temperature=0, max_tokens=24, ignore_eos=True))
        )
    out: dict[str, list[int]] = {f"g{i}": [] for i in range(len(prompts))}
    while engine.has_unfinished():
        for o in engine.step():
            out[o.request_id].append(o.token_id)
    return out


def test_without_a_compiler_the_engine_serves_eager(lm, monkeypatch, caplog):
    """No C++ compiler on PATH (as in the image): the engine says so at once and decodes eager."""
    import torch._inductor.cpp_builder as cpp_builder

    from shared.engine import cpu_kernels

    cpp_builder.cpp_compiler_search.cache_clear()  # Inductor caches the compiler it found
    cpu_kernels._load.cache_clear()  # and the engine the C kernels it loaded
    monkeypatch.setenv("PATH", "/nonexistent")
    try:
        engine = Engine(lm, EngineConfig(block_size=16, num_blocks=96, max_num_seqs=8, compile_decode=True))
        with pytest.raises(ValueError, match="attention-backend flex compiles FlexAttention, but no C"):
            Engine(lm, EngineConfig(num_blocks=96, max_num_seqs=8, attention_backend="flex"))
    finally:
        cpp_builder.cpp_compiler_search.cache_clear()
        cpu_kernels._load.cache_clear()
    graph = engine.runner.graph
    assert graph is not None and not graph.ready and graph.warmup_seconds == 0  # nothing traced
    assert graph.error == "no C++ compiler for Inductor's CPU kernels (g++ on PATH, or CXX)"
    assert "decode graph not compiled, decode steps stay eager" in caplog.text
    out = _greedy(engine, [[5, 6, 7, 8]])
    assert len(out["g0"]) == 24 and graph.steps == 0


def test_a_failed_compile_leaves_eager_steps(lm, monkeypatch, caplog):
    """Whatever else compiling raises: logged, and the engine serves eager."""
    from shared.engine.decode_graph import DecodeGraph

    def broken(self):
        raise RuntimeError("LoweringException: something new\nmore lines")

    monkeypatch.setattr(DecodeGraph, "warmup", broken)
    engine = Engine(lm, EngineConfig(block_size=16, num_blocks=96, max_num_seqs=8, compile_decode=True))
    graph = engine.runner.graph
    assert graph is not None and not graph.ready
    assert graph.error == "RuntimeError: LoweringException: something new"
    assert "decode graph not compiled, decode steps stay eager" in caplog.text
    assert len(_greedy(engine, [[5, 6, 7, 8]])["g0"]) == 24 and graph.steps == 0
