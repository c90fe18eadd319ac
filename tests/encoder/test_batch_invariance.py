"""What the bitwise acceptance test rests on: an image's fp32 vision output does not depend on
which other images share its batch, on the CPU with one torch thread, for images of >= 4 tokens.

Why: attention is per image already; layer norms are per row; what couples images is only the
GEMM of each linear layer over the concatenated rows. MKL's fp32 GEMM computes each output row
with the same K-order whatever M is, *except* small-M paths: with 1 thread, M <= 3 rows (the
patch mergers of an image of 1-3 tokens run alone) take another kernel and differ in the last bits;
with 2 threads, M is split between threads and small remainders differ too. Published
preprocessing gives every image >= 64 tokens, so only tiny test images could hit this.
"""

from __future__ import annotations

from pathlib import Path

import torch

from shared.models.loader import load_model


def test_batched_equals_one_image_at_a_time(checkpoint: Path) -> None:
    assert torch.get_num_threads() == 1
    model = load_model(checkpoint, parts={"vision"}, dtype="float32")
    torch.manual_seed(0)
    grids = [(1, 4, 4), (1, 8, 12), (1, 20, 20), (1, 4, 6), (1, 16, 8)]
    pixels = [torch.randn(t * h * w, 1536) for t, h, w in grids]
    batched = model.get_image_feature(torch.cat(pixels), grids)
    for grid, pv, together in zip(grids, pixels, batched, strict=True):
        alone = model.get_image_feature(pv, [grid])[0]
        assert torch.equal(alone.embeds, together.embeds), grid
        assert torch.equal(alone.deepstack, together.deepstack), grid
