"""A vision-only load of a checkpoint whose language part is 20x larger stays near the vision size."""

from __future__ import annotations

import pytest

from tools.measure_load_memory import measure, part_bytes, ratio_spec

# Three child interpreters each loading a checkpoint, ~40 s: kept out of `make test-fast`.
pytestmark = pytest.mark.slow

MB = 1 << 20


def test_vision_only_load_does_not_grow_with_the_language_part(tiny_checkpoint):
    big = tiny_checkpoint(**ratio_spec(20))
    small = tiny_checkpoint(**ratio_spec(1))
    big_sizes, small_sizes = part_bytes(big), part_bytes(small)
    assert big_sizes["vision"] == small_sizes["vision"]
    assert big_sizes["language"] >= 20 * big_sizes["vision"]
    vision_big, vision_small = measure(big, "vision"), measure(small, "vision")
    language = measure(big, "language")
    print(f"\nparts: {big_sizes}; vision-only load: {vision_big} (with a 1x language part: {vision_small});")
    print(f"language-only load: {language}")
    assert vision_big["param_bytes"] == big_sizes["vision"]
    # The same vision load costs the same whether the language part is 1x or 20x the vision part:
    # a fixed few MB of first-load allocations plus the vision weights, nothing from the language part.
    assert abs(vision_big["peak_rss_growth"] - vision_small["peak_rss_growth"]) < 2 * MB
    assert vision_big["peak_rss_growth"] < big_sizes["vision"] + 16 * MB < big_sizes["language"]
    assert language["peak_rss_growth"] >= big_sizes["language"]
