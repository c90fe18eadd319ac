"""Reference-counted blocks of the paged KV pool, and the prefix cache's block registry.

Owns only block ids (integers); the tensors live in ``KVPool``. Every block is in one of three
states:

    free      refcount 0, no hash       reused first
    cached    refcount 0, hash known    reusable by a prompt with the same prefix; evicted LRU
    in use    refcount > 0              held by one or more sequences (shared prefix blocks)

``allocate`` takes a free block, else evicts the least recently released cached block (its hash
is forgotten). ``release`` drops one reference; at zero a hashed block becomes cached (most
recently used), an unhashed one free. ``num_free`` counts free and cached blocks: both can be
handed out, so an idle engine has ``num_free == num_blocks``.
"""

from __future__ import annotations

from collections import OrderedDict, deque


class NoFreeBlocks(RuntimeError):
    """Raised by ``allocate`` when every block is in use; callers check ``num_free`` first."""


class BlockAllocator:
    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self._refs = [0] * num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._evictable: OrderedDict[int, None] = OrderedDict()  # cached blocks, least recent first
        self._hash_of: dict[int, bytes] = {}
        self._block_of: dict[bytes, int] = {}

    @property
    def num_free(self) -> int:
        return len(self._free) + len(self._evictable)

    @property
    def num_cached(self) -> int:
        """Blocks that hold a registered prefix (in use or not)."""
        return len(self._hash_of)

    def refcount(self, block: int) -> int:
        return self._refs[block]

    def allocate(self) -> int:
        if self._free:
            block = self._free.popleft()
        elif self._evictable:
            block, _ = self._evictable.popitem(last=False)
            del self._block_of[self._hash_of.pop(block)]
        else:
            raise NoFreeBlocks("every KV block is in use")
        self._refs[block] = 1
        return block

    def retain(self, block: int) -> None:
        """One more reference to a block found by ``lookup`` (shared prefix)."""
        if self._refs[block] == 0:
            del self._evictable[block]
        self._refs[block] += 1

    def release(self, block: int) -> None:
        if self._refs[block] <= 0:
            raise RuntimeError(f"block {block} released more often than allocated")
        self._refs[block] -= 1
        if self._refs[block] == 0:
            if block in self._hash_of:
                self._evictable[block] = None
            else:
                self._free.append(block)

    def lookup(self, block_hash: bytes) -> int | None:
        return self._block_of.get(block_hash)

    def register(self, block: int, block_hash: bytes) -> bool:
        """Make an in-use block findable by its prefix hash; False if that prefix is already cached."""
        if block_hash in self._block_of or block in self._hash_of:
            return False
        self._block_of[block_hash] = block
        self._hash_of[block] = block_hash
        return True
