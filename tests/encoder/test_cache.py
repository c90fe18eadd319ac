"""The embedding cache: LRU by bytes, counted hits and misses."""

from __future__ import annotations

import pytest
import torch

from shared.vision.cache import CachedEmbedding, EmbeddingCache

pytestmark = pytest.mark.unit


def entry(rows: int) -> CachedEmbedding:  # rows * 4 floats * 4 bytes * (1 + 1 deepstack level)
    return CachedEmbedding((1, 2, 2 * rows), torch.zeros(rows, 4), torch.zeros(1, rows, 4))


def test_lru_eviction_by_bytes() -> None:
    cache = EmbeddingCache(max_bytes=3 * 32)
    for key in "abc":
        cache.put(key, entry(1))
    assert cache.bytes == 96 and len(cache) == 3
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("d", entry(1))
    assert "b" not in cache and all(k in cache for k in "acd")
    cache.put("e", entry(2))  # 64 bytes: evicts c and a
    assert sorted(k for k in "abcde" if k in cache) == ["d", "e"] and cache.bytes == 96
    assert cache.evictions == 3


def test_hits_misses_and_oversized_entries() -> None:
    cache = EmbeddingCache(max_bytes=40)
    assert cache.get("x") is None
    cache.put("x", entry(1))
    cache.put("big", entry(2))  # larger than the whole cache: not stored
    assert cache.get("x") is not None and cache.get("big") is None
    assert (cache.hits, cache.misses, cache.hit_rate) == (1, 2, 1 / 3)
    cache.put("x", entry(1))  # replacing does not double-count
    assert cache.bytes == 32
