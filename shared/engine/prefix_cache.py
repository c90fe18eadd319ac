"""Prefix-cache keys: one hash per full block of a prompt, chained through the blocks before it.

A block's hash covers its token ids, the hash of the block before it (so equal blocks after
different prefixes differ) and, for image tokens, the image's content hash and the offsets of the
block's rows within the image. Image tokens all carry the same token id; keying them by content
is what keeps two different images from sharing KV. Positions need no key: they follow from the
tokens and images before them. Only the prompt is hashed; generated tokens are never shared.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence

from shared.engine.request import ImageInput


def prompt_block_hashes(
    token_ids: Sequence[int], images: Sequence[ImageInput], block_size: int
) -> list[bytes]:
    """Hashes of the prompt's full blocks, in order."""
    hashes: list[bytes] = []
    parent = b""
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        end = start + block_size
        h = hashlib.sha256(parent)
        h.update(array("q", token_ids[start:end]).tobytes())
        for img in images:
            lo, hi = max(start, img.start), min(end, img.end)
            if lo < hi:
                h.update(f"|{img.content_hash}:{img.num_tokens}:{lo - img.start}:{hi - img.start}".encode())
        parent = h.digest()
        hashes.append(parent)
    return hashes
