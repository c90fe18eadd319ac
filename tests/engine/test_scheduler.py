"""The scheduler without a model: budgets, chunks, decodes every step, preemption, fairness, aborts.

``step`` plays the engine's part: scheduled tokens become computed; a sequence whose last token
was computed samples token 7; one that reached its max_tokens finishes.
"""

from __future__ import annotations

import random

import pytest

from shared.engine.block_manager import BlockManager
from shared.engine.config import EngineConfig
from shared.engine.request import SamplingParams
from shared.engine.scheduler import Scheduler, SchedulerOutput
from shared.engine.sequence import Sequence, Status

pytestmark = pytest.mark.unit


def make(num_blocks: int, block_size: int = 4, prefix_cache: bool = False, **cfg) -> Scheduler:
    config = EngineConfig(
        block_size=block_size, num_blocks=num_blocks, enable_prefix_cache=prefix_cache, **cfg
    )
    return Scheduler(config, BlockManager(num_blocks, block_size, prefix_cache))


def seq(arrival: int, prompt: int, max_tokens: int = 4) -> Sequence:
    ids = [(arrival * 31 + i) % 50 for i in range(prompt)]
    return Sequence(f"s{arrival}", ids, prompt, SamplingParams(max_tokens=max_tokens), arrival)


def step(s: Scheduler) -> SchedulerOutput:
    out = s.schedule()
    for item in out.scheduled:
        q = item.seq
        assert item.start == q.num_computed_tokens
        assert len(q.block_table) * s.blocks.block_size >= item.end  # the pool holds what is computed
        q.num_computed_tokens = item.end
        s.blocks.register(q)
        if item.end == q.num_tokens:
            q.token_ids.append(7)
            if q.num_output_tokens >= q.params.max_tokens:
                s.finish(q)
    return out


def test_chunks_respect_chunk_size_and_budget():
    s = make(64, prefill_chunk_size=16, max_num_batched_tokens=40, max_num_seqs=4)
    long, short = seq(0, 100), seq(1, 30)
    s.add(long)
    s.add(short)
    sizes = []
    while long.num_computed_tokens < 100:
        out = step(s)
        assert out.num_tokens <= 40 and all(i.num_tokens <= 16 for i in out.scheduled)
        sizes.append([(i.seq.request_id, i.num_tokens) for i in out.scheduled])
    assert sizes[0] == [("s0", 16), ("s1", 16)]
    assert sum(n for step_sizes in sizes for rid, n in step_sizes if rid == "s0") == 100


def test_every_running_sequence_decodes_every_step():
    s = make(200, prefill_chunk_size=8, max_num_batched_tokens=8, max_num_seqs=8)
    decoders = [seq(i, 3, max_tokens=30) for i in range(5)]
    for d in decoders:
        s.add(d)
    for _ in range(3):  # 15 prompt tokens at 8 a step
        step(s)
    assert all(d.is_decoding for d in decoders)
    big = seq(10, 50)
    s.add(big)
    for _ in range(10):  # the prompt's chunks get what the five decodes leave of the budget
        out = step(s)
        expected = {d.request_id: 1 for d in decoders} | {"s10": 3}
        assert {i.seq.request_id: i.num_tokens for i in out.scheduled} == expected


def test_out_of_blocks_preempts_the_newest_and_it_recovers():
    s = make(8, block_size=4, prefill_chunk_size=16, max_num_batched_tokens=32, max_num_seqs=4)
    a, b = seq(0, 12, max_tokens=8), seq(1, 12, max_tokens=8)  # 20 tokens = 5 blocks each at the end
    s.add(a)
    s.add(b)
    preempted = []
    for _ in range(100):
        if not s.has_work():
            break
        preempted += [p.request_id for p in step(s).preempted]
        used = 8 - s.blocks.num_free_blocks
        assert used == sum(len(q.block_table) for q in s.running)
    assert not s.has_work()
    assert preempted and set(preempted) == {"s1"}  # the older one is never the victim
    assert a.num_output_tokens == 8 and b.num_output_tokens == 8
    assert s.blocks.num_free_blocks == 8 and s.num_preemptions == len(preempted)


def test_a_large_request_is_not_overtaken():
    s = make(10, block_size=4, prefill_chunk_size=64, max_num_batched_tokens=64, max_num_seqs=8)
    running = seq(0, 20, max_tokens=4)
    s.add(running)
    step(s)
    big = seq(1, 30, max_tokens=2)  # needs 8 blocks: waits until `running` is done
    s.add(big)
    small = seq(2, 2, max_tokens=2)
    s.add(small)
    while running.status is not Status.FINISHED:
        step(s)
        assert small.status is Status.WAITING
    step(s)
    assert big.status is Status.RUNNING


def test_abort_frees_everything_in_every_state():
    s = make(12, block_size=4, prefill_chunk_size=4, max_num_batched_tokens=8, max_num_seqs=2)
    a, b, c = seq(0, 2, 20), seq(1, 30), seq(2, 5)
    for q in (a, b, c):
        s.add(q)
    step(s)
    step(s)
    assert a.is_decoding and b.status is Status.RUNNING and c.status is Status.WAITING
    assert b.num_computed_tokens < 30
    for q in (a, b, c):
        s.abort(q)
        assert q.status is Status.FINISHED and not q.block_table
    assert not s.has_work() and s.blocks.num_free_blocks == 12


def test_random_load_finishes_everything_without_starvation():
    rng = random.Random(0)
    s = make(
        24, block_size=4, prefix_cache=True, prefill_chunk_size=8, max_num_batched_tokens=12, max_num_seqs=6
    )
    seqs, added, done = [], {}, {}
    for t in range(5000):
        if t < 200 and rng.random() < 0.3:
            q = seq(len(seqs), rng.randint(1, 60), rng.randint(1, 30))
            q.token_ids[:8] = [1] * min(8, q.num_prompt_tokens)  # shared prefixes for the cache
            seqs.append(q)
            s.add(q)
            added[q.request_id] = t
        step(s)
        done |= {q.request_id: t for q in seqs if q.status is Status.FINISHED and q.request_id not in done}
        if not s.has_work() and t >= 200:
            break
    assert not s.has_work()
    waits = [done[r] - added[r] for r in added]
    print(
        f"{len(seqs)} requests, {t} steps, {s.num_preemptions} preemptions, longest stay {max(waits)} steps"
    )
    assert all(q.num_output_tokens == q.params.max_tokens for q in seqs)
    assert s.blocks.num_free_blocks == 24
    assert s.num_preemptions > 0 and s.num_cached_tokens > 0
