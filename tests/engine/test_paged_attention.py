"""The paged backend against the contiguous reference on a mixed batch, and the pool's copy-out/in."""

from __future__ import annotations

import pytest
import torch

from shared.engine.kv_pool import KVPool
from shared.engine.paged_attention import PagedAttention
from shared.models.layers.attention import ContiguousAttention, SequenceKV
from tests.numerics import assert_close_scaled

pytestmark = pytest.mark.unit

LAYERS, HQ, HKV, D, BS = 2, 4, 2, 8, 4


# (cached tokens, new tokens) per sequence, and how many SDPA groups the backend should form
BATCHES = {
    "decodes and chunks": ([(9, 1), (2, 1), (0, 7), (5, 6), (12, 1)], 2),
    "chunks first": ([(0, 5), (3, 4), (7, 1)], 2),
    "uneven chunks one by one": ([(0, 2), (60, 30), (0, 2), (4, 1)], 4),
    "one whole prompt": ([(0, 8)], 1),
    "decodes only": ([(3, 1), (17, 1), (1, 1)], 1),
}


@pytest.mark.parametrize("name", list(BATCHES))
def test_batches_match_contiguous_reference(name):
    shapes, num_groups = BATCHES[name]
    g = torch.Generator().manual_seed(0)
    pool = KVPool(LAYERS, 64, BS, HKV, D, torch.float32, torch.device("cpu"))
    free = list(torch.randperm(64, generator=g).tolist())  # scattered blocks
    tables = [[free.pop() for _ in range(-(-(c + n) // BS))] for c, n in shapes]
    refs = [SequenceKV(LAYERS) for _ in shapes]
    for layer in range(LAYERS):  # fill the cached part in both caches
        for (c, _), table, ref in zip(shapes, tables, refs, strict=True):
            k, v = torch.randn(2, c, HKV, D, generator=g)
            ref.append(layer, k, v)
            if c:
                pool.write_layer(table, layer, k, v)
    slots = torch.tensor(
        [s for (c, n), t in zip(shapes, tables, strict=True) for s in pool.slot_ids(t, c, c + n)]
    )
    lens = [n for _, n in shapes]
    paged = PagedAttention(pool, lens, [c + n for c, n in shapes], tables, slots, D**-0.5)
    contiguous = ContiguousAttention(refs, lens, D**-0.5)
    assert len(paged.groups) == num_groups
    for layer in range(LAYERS):
        q = torch.randn(sum(lens), HQ, D, generator=g)
        k, v = torch.randn(2, sum(lens), HKV, D, generator=g)
        # Grouped, padded and masked SDPA vs one call per sequence: fp32 round-off, scaled.
        got, want = paged.forward(layer, q, k, v), contiguous.forward(layer, q, k, v)
        assert_close_scaled(got, want, name=f"layer {layer} paged vs contiguous")
    for (c, n), table, ref in zip(shapes, tables, refs, strict=True):  # the pool now holds it all
        kv = pool.read(table, c + n)
        for layer in range(LAYERS):
            assert torch.equal(kv.keys[layer], ref.keys[layer]) and torch.equal(
                kv.values[layer], ref.values[layer]
            )


def test_pure_decode_batch_takes_the_batched_path():
    pool = KVPool(1, 8, BS, HKV, D, torch.float32, torch.device("cpu"))
    attn = PagedAttention(pool, [1, 1], [3, 6], [[0], [5, 2]], torch.tensor([2, 2 * BS + 1]), 1.0)
    (group,) = attn.groups
    assert group.in_order and group.valid is None and group.tpad == 1
    assert group.mask.shape == (2, 1, 1, 2 * BS)
