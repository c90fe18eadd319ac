"""The embedding cache: vision-tower outputs by (content hash, preprocessing settings), LRU in bytes.

The key includes the preprocessing fingerprint so that two encoders with different image settings
never share an entry. Entries are the CPU tensors exactly as they are sent, so a hit ships without
touching the device. An entry larger than the whole budget is not stored.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CachedEmbedding:
    grid_thw: tuple[int, int, int]
    embeds: torch.Tensor  # [n, H], CPU
    deepstack: torch.Tensor  # [S, n, H], CPU

    @property
    def nbytes(self) -> int:
        return self.embeds.nbytes + self.deepstack.nbytes


class EmbeddingCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._entries: OrderedDict[str, CachedEmbedding] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> CachedEmbedding | None:
        """Look up and count a hit or a miss; a hit becomes the most recently used entry."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: CachedEmbedding) -> None:
        if entry.nbytes > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.nbytes
        self._entries[key] = entry
        self.bytes += entry.nbytes
        while self.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.nbytes
            self.evictions += 1

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0
