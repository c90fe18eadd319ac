"""Block tables of sequences: growing them, sharing cached prefixes, giving blocks back.

Owns the ``BlockAllocator`` and is the only code that changes a sequence's ``block_table``. The
scheduler asks ``can_grow`` before ``grow`` (which then cannot fail), calls ``match_prefix`` when
it admits a sequence that holds no blocks, ``register`` after each step so that computed prompt
blocks become shareable, and ``free`` when a sequence finishes, is preempted or aborted.
"""

from __future__ import annotations

from shared.engine.block_allocator import BlockAllocator
from shared.engine.prefix_cache import prompt_block_hashes
from shared.engine.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_cache: bool) -> None:
        self.allocator = BlockAllocator(num_blocks)
        self.block_size = block_size
        self.enable_prefix_cache = enable_prefix_cache

    @property
    def num_blocks(self) -> int:
        return self.allocator.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.allocator.num_free

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def can_grow(self, seq: Sequence, num_tokens: int) -> bool:
        """Whether the sequence's table can cover its first ``num_tokens`` tokens."""
        return self.blocks_for(num_tokens) - len(seq.block_table) <= self.allocator.num_free

    def grow(self, seq: Sequence, num_tokens: int) -> None:
        for _ in range(self.blocks_for(num_tokens) - len(seq.block_table)):
            seq.block_table.append(self.allocator.allocate())

    def match_prefix(self, seq: Sequence) -> int:
        """Share the longest cached prefix of the prompt; returns the number of tokens reused.

        At least one token is left to compute: its logits are what the step samples from.
        """
        if not self.enable_prefix_cache or not seq.recomputable or seq.block_table:
            return 0
        if seq.block_hashes is None:
            seq.block_hashes = prompt_block_hashes(
                seq.token_ids[: seq.num_prompt_tokens], seq.images, self.block_size
            )
        limit = min(len(seq.block_hashes), (seq.num_tokens - 1) // self.block_size)
        for block_hash in seq.block_hashes[:limit]:
            block = self.allocator.lookup(block_hash)
            if block is None:
                break
            self.allocator.retain(block)
            seq.block_table.append(block)
        seq.num_computed_tokens = len(seq.block_table) * self.block_size
        seq.num_registered_blocks = len(seq.block_table)
        seq.num_cached_tokens = seq.num_computed_tokens
        return seq.num_computed_tokens

    def register(self, seq: Sequence) -> None:
        """Offer the sequence's newly computed full prompt blocks to the prefix cache."""
        if not self.enable_prefix_cache or seq.block_hashes is None:
            return
        full = min(seq.num_computed_tokens // self.block_size, len(seq.block_hashes))
        for i in range(seq.num_registered_blocks, full):
            self.allocator.register(seq.block_table[i], seq.block_hashes[i])
        seq.num_registered_blocks = max(full, seq.num_registered_blocks)

    def free(self, seq: Sequence) -> None:
        """Release every block of the sequence; tail first, so that cached prefixes outlive tails."""
        for block in reversed(seq.block_table):
            self.allocator.release(block)
        seq.block_table = []
        seq.num_registered_blocks = 0
