"""Reference counts, free/cached/in-use states and LRU eviction of the block allocator."""

from __future__ import annotations

import pytest

from shared.engine.block_allocator import BlockAllocator, NoFreeBlocks

pytestmark = pytest.mark.unit


def test_allocate_release_and_refcounts():
    a = BlockAllocator(3)
    blocks = [a.allocate() for _ in range(3)]
    assert sorted(blocks) == [0, 1, 2] and a.num_free == 0
    with pytest.raises(NoFreeBlocks):
        a.allocate()
    a.retain(blocks[0])
    assert a.refcount(blocks[0]) == 2
    a.release(blocks[0])
    assert a.num_free == 0  # still held once
    a.release(blocks[0])
    assert a.num_free == 1 and a.allocate() == blocks[0]
    with pytest.raises(RuntimeError, match="released more often"):
        a.release(blocks[1])
        a.release(blocks[1])


def test_cached_blocks_are_reusable_until_evicted_lru():
    a = BlockAllocator(3)
    b0, b1, b2 = (a.allocate() for _ in range(3))
    assert a.register(b0, b"h0") and a.register(b1, b"h1")
    assert not a.register(b2, b"h0")  # that prefix is cached already
    a.release(b1)  # released first: least recently used
    a.release(b0)
    assert a.num_free == 2 and a.num_cached == 2
    assert a.lookup(b"h1") == b1
    a.retain(b1)  # a prefix hit takes it out of the evictable set
    assert a.num_free == 1
    a.release(b1)  # now b0 is the least recent
    a.release(b2)  # unhashed: plain free, handed out before any cached block
    assert a.allocate() == b2
    assert a.allocate() == b0 and a.lookup(b"h0") is None  # evicted, its hash forgotten
    assert a.lookup(b"h1") == b1
    assert a.allocate() == b1 and a.num_cached == 0 and a.num_free == 0


def test_free_count_returns_to_full():
    a = BlockAllocator(8)
    held = [a.allocate() for _ in range(8)]
    for i, b in enumerate(held[:4]):
        a.register(b, bytes([i]))
    for b in held:
        a.release(b)
    assert a.num_free == 8
