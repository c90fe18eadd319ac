"""Prefix-cache keys (text and image tokens) and the block manager's prefix matching."""

from __future__ import annotations

import pytest
import torch

from shared.engine.block_manager import BlockManager
from shared.engine.prefix_cache import prompt_block_hashes
from shared.engine.request import ImageInput, SamplingParams
from shared.engine.sequence import Sequence

pytestmark = pytest.mark.unit

IMG = 99


def image(content_hash: str, start: int, n: int) -> ImageInput:
    return ImageInput(torch.zeros(n, 4), torch.zeros(1, n, 4), content_hash, start)


def test_hashes_chain_through_the_prefix():
    a = prompt_block_hashes([1, 2, 3, 4, 5, 6, 7, 8, 9], [], 4)
    b = prompt_block_hashes([1, 2, 3, 4, 5, 6, 7, 0, 9], [], 4)
    c = prompt_block_hashes([0, 2, 3, 4, 5, 6, 7, 8], [], 4)
    assert len(a) == 2  # full blocks only
    assert a[0] == b[0] and a[1] != b[1]
    assert c[0] != a[0] and c[1] != a[1]  # same tokens after a different prefix


def test_image_tokens_are_keyed_by_content():
    ids = [1, 2, IMG, IMG, IMG, IMG, IMG, IMG, 3, 4, 5, 6]
    same = prompt_block_hashes(ids, [image("cat", 2, 6)], 4)
    assert same == prompt_block_hashes(ids, [image("cat", 2, 6)], 4)
    other = prompt_block_hashes(ids, [image("dog", 2, 6)], 4)
    assert all(x != y for x, y in zip(same, other, strict=True))  # every block holds image rows
    text_only = prompt_block_hashes([1, 2, 3, 4], [], 4)
    assert prompt_block_hashes([1, 2, 3, 4, *ids[4:]], [image("cat", 4, 4)], 4)[0] == text_only[0]


def seq(ids: list[int], images=(), arrival: int = 0) -> Sequence:
    return Sequence(f"s{arrival}", list(ids), len(ids), SamplingParams(), arrival, images=list(images))


def compute(bm: BlockManager, s: Sequence) -> None:
    """What the engine does for a prompt: cached prefix, blocks, computed, registered."""
    bm.match_prefix(s)
    bm.grow(s, s.num_tokens)
    s.num_computed_tokens = s.num_tokens
    bm.register(s)


def test_match_prefix_shares_blocks_and_leaves_one_token():
    bm = BlockManager(16, 4, enable_prefix_cache=True)
    first = seq(list(range(12)))
    compute(bm, first)
    assert first.num_cached_tokens == 0
    again = seq(list(range(12)), arrival=1)
    assert bm.match_prefix(again) == 8  # the block holding the last token is recomputed
    assert again.block_table == first.block_table[:2]
    assert bm.allocator.refcount(first.block_table[0]) == 2
    longer = seq([*range(12), 50, 51, 52], arrival=2)
    assert bm.match_prefix(longer) == 12
    diverged = seq([0, 1, 2, 3, 9, 9, 9, 9, 9], arrival=3)
    assert bm.match_prefix(diverged) == 4
    for s in (first, again, longer, diverged):
        bm.free(s)
    assert bm.num_free_blocks == 16


def test_different_images_share_only_the_text_before_them():
    bm = BlockManager(16, 4, enable_prefix_cache=True)
    ids = [1, 2, 3, 4, 5, IMG, IMG, IMG, IMG, IMG, IMG, 7, 8, 9]
    cat = seq(ids, [image("cat", 5, 6)])
    compute(bm, cat)
    assert bm.match_prefix(seq(ids, [image("cat", 5, 6)], 1)) == 12
    assert bm.match_prefix(seq(ids, [image("dog", 5, 6)], 2)) == 4


def test_disabled_cache_never_matches():
    bm = BlockManager(16, 4, enable_prefix_cache=False)
    s = seq(list(range(12)))
    compute(bm, s)
    bm.free(s)
    assert bm.match_prefix(seq(list(range(12)), arrival=1)) == 0
    assert bm.allocator.num_cached == 0
