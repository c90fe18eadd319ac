"""The FlexAttention backend against the contiguous reference, and its pool writes against the gather
backend's. Every test uses one pool geometry, so the module compiles flex once per G (~25 s each
with a cold Inductor cache, a few seconds warm): hence the slow tier."""

from __future__ import annotations

import pytest
import torch

from shared.engine.flex_attention import FlexPagedAttention
from shared.engine.kv_pool import KVPool
from shared.engine.paged_attention import PagedAttention
from shared.models.layers.attention import ContiguousAttention, SequenceKV
from tests.numerics import assert_close_scaled

pytestmark = pytest.mark.slow

LAYERS, NUM_BLOCKS, HKV, D, BS = 3, 64, 2, 16, 4
GROUPS = (2, 4)  # Hq / Hkv

# (cached tokens, new tokens) per sequence
BATCHES = {
    "decodes and chunks": [(9, 1), (2, 1), (0, 7), (5, 6), (12, 1)],
    "chunks across block boundaries": [(0, 5), (3, 4), (7, 1), (1, 11)],
    "uneven chunks": [(0, 2), (60, 30), (0, 2), (4, 1)],
    "one whole prompt": [(0, 8)],
    "one decode": [(3, 1)],
    "decodes only": [(3, 1), (17, 1), (1, 1), (7, 1)],
    "decodes at block ends": [(3, 1), (7, 1), (0, 1), (15, 1)],
}


class Batch:
    """A pool (and a copy for the gather backend), block tables, and reference caches that hold the
    same cached K/V. Sequence i > 0 shares the first ``shared`` physical blocks of sequence 0, as the
    prefix cache would (same blocks, same contents, same logical places)."""

    def __init__(self, shapes: list[tuple[int, int]], shared: int, g: torch.Generator) -> None:
        self.pool = KVPool(LAYERS, NUM_BLOCKS, BS, HKV, D, torch.float32, torch.device("cpu"))
        self.gather_pool = KVPool(LAYERS, NUM_BLOCKS, BS, HKV, D, torch.float32, torch.device("cpu"))
        free = torch.randperm(NUM_BLOCKS, generator=g).tolist()  # scattered, non-contiguous blocks
        prefix = [free.pop() for _ in range(shared)]
        self.tables = [prefix + [free.pop() for _ in range(-(-(c + n) // BS) - shared)] for c, n in shapes]
        self.refs = [SequenceKV(LAYERS) for _ in shapes]
        for layer in range(LAYERS):
            shared_kv = torch.randn(2, shared * BS, HKV, D, generator=g)
            for (c, _), table, ref in zip(shapes, self.tables, self.refs, strict=True):
                own = torch.randn(2, c - min(c, shared * BS), HKV, D, generator=g)
                k, v = torch.cat((shared_kv[:, :c], own), dim=1)
                ref.append(layer, k, v)
                if c:
                    self.pool.write_layer(table, layer, k, v)
        self.gather_pool.k.copy_(self.pool.k)
        self.gather_pool.v.copy_(self.pool.v)
        self.query_lens = [n for _, n in shapes]
        self.seq_lens = [c + n for c, n in shapes]
        self.slots = torch.tensor(
            [
                s
                for (c, n), t in zip(shapes, self.tables, strict=True)
                for s in self.pool.slot_ids(t, c, c + n)
            ]
        )

    def flex(self) -> FlexPagedAttention:
        return FlexPagedAttention(self.pool, self.query_lens, self.seq_lens, self.tables, self.slots, D**-0.5)

    def gather(self) -> PagedAttention:
        args = (self.query_lens, self.seq_lens, self.tables, self.slots, D**-0.5)
        return PagedAttention(self.gather_pool, *args)


def run_layers(batch: Batch, group: int, g: torch.Generator, name: str) -> None:
    """Every layer in order through both backends and the reference; outputs against the reference,
    pools against each other (same slots written, bit for bit)."""
    flex, gather = batch.flex(), batch.gather()
    reference = ContiguousAttention(batch.refs, batch.query_lens, D**-0.5)
    tokens = sum(batch.query_lens)
    for layer in range(LAYERS):
        q = torch.randn(tokens, HKV * group, D, generator=g)
        k, v = torch.randn(2, tokens, HKV, D, generator=g)
        got, want = flex.forward(layer, q, k, v), reference.forward(layer, q, k, v)
        gather.forward(layer, q, k, v)
        # Block-sparse online softmax vs one SDPA call per sequence: fp32 round-off, scaled.
        assert_close_scaled(got, want, name=f"{name} G={group} layer {layer} flex vs contiguous")
    assert torch.equal(batch.pool.k, batch.gather_pool.k) and torch.equal(batch.pool.v, batch.gather_pool.v)


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("name", list(BATCHES))
def test_batches_match_contiguous_reference(name: str, group: int) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        run_layers(Batch(BATCHES[name], 0, g), group, g, name)


@pytest.mark.parametrize("group", GROUPS)
def test_prefix_shared_blocks(group: int) -> None:
    """Three sequences on the same two physical prefix blocks: two decodes and a chunk after it."""
    g = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        run_layers(Batch([(8, 1), (11, 1), (8, 5)], 2, g), group, g, "shared prefix")


def test_new_step_shapes_do_not_recompile() -> None:
    """After the first step of a geometry, steps of other sizes reuse the compiled kernel."""
    g = torch.Generator().manual_seed(2)
    with torch.inference_mode():
        run_layers(Batch([(5, 3)], 0, g), GROUPS[0], g, "warm-up")
        with torch._dynamo.config.patch(error_on_recompile=True):
            for shapes in ([(1, 1)], [(0, 2), (9, 1)], [(30, 25), (2, 1), (6, 1)], [(20, 1)] * 9):
                run_layers(Batch(shapes, 0, g), GROUPS[0], g, "no recompile")
