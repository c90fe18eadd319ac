"""A vision-only load of a checkpoint whose language part is 20x larger stays near the vision size."""

from __future__ import annotations

from tools.measure_load_memory import measure, part_bytes, ratio_spec

MB = 1 << 20


def test_vision_only_load_does_not_touch_the_language_part(tiny_checkpoint):
    ckpt = tiny_checkpoint(**ratio_spec(20))
    sizes = part_bytes(ckpt)
    assert sizes["language"] >= 20 * sizes["vision"]
    vision = measure(ckpt, "vision")
    language = measure(ckpt, "language")
    print(f"\nparts: {sizes}; vision-only load: {vision}; language-only load: {language}")
    assert vision["param_bytes"] == sizes["vision"]
    # A fixed few MB of first-load overhead, but nothing that scales with the language part.
    assert vision["peak_rss_growth"] < sizes["vision"] + 8 * MB
    assert vision["peak_rss_growth"] < sizes["language"] / 4
    assert language["peak_rss_growth"] >= sizes["language"]
