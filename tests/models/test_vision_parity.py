"""The vision tower and get_image_feature against transformers' Qwen3VLMoeForConditionalGeneration."""

from __future__ import annotations

import pytest
import torch

from tests.models.conftest import MAX_PIXELS
from tests.numerics import assert_close_scaled

pytestmark = pytest.mark.parity


def test_grids_cover_the_interesting_sizes(images, processor_config):
    pixels = [g[1] * g[2] * processor_config.patch_size**2 for _, g in images]
    assert pixels[0] >= processor_config.min_pixels > 40 * 30  # upscaled to the minimum
    assert any(g[1] != g[2] for _, g in images)  # non-square grids
    assert pixels[-1] <= MAX_PIXELS < 640 * 480  # downscaled to the maximum


def test_each_image_alone_matches_transformers(ours, hf, images):
    for pixel_values, grid in images:
        (feature,) = ours.get_image_feature(pixel_values, [grid])
        with torch.no_grad():
            ref = hf.model.get_image_features(pixel_values, torch.tensor([grid]), return_dict=True)
        assert feature.embeds.shape == ref.pooler_output[0].shape
        # Another implementation sums in another order: fp32 round-off, scaled to the features.
        assert_close_scaled(feature.embeds, ref.pooler_output[0], name=f"{tuple(grid)} embeds")
        assert feature.deepstack.shape[0] == len(ref.deepstack_features) >= 2
        for level, ref_level in enumerate(ref.deepstack_features):
            assert_close_scaled(feature.deepstack[level], ref_level[0], name=f"{tuple(grid)} deepstack")


def test_a_batch_of_images_matches_transformers(ours, hf, images):
    pixel_values = torch.cat([p for p, _ in images])
    grids = [g for _, g in images]
    features = ours.get_image_feature(pixel_values, grids)
    with torch.no_grad():
        ref = hf.model.get_image_features(pixel_values, torch.tensor(grids), return_dict=True)
    assert [f.num_tokens for f in features] == [r.shape[0] for r in ref.pooler_output]
    for i, feature in enumerate(features):
        assert_close_scaled(feature.embeds, ref.pooler_output[i], name=f"image {i} embeds")
        for level, ref_level in enumerate(ref.deepstack_features):
            assert_close_scaled(feature.deepstack[level], ref_level[i], name=f"image {i} deepstack")


def test_bad_pixel_shape_is_a_clear_error(ours, images):
    pixel_values, grid = images[0]
    try:
        ours.get_image_feature(pixel_values[:-1], [grid])
    except ValueError as e:
        assert "do not match grids" in str(e)
    else:
        raise AssertionError("a pixel/grid mismatch must be refused")


def test_videos_with_images_match_get_video_features(ours, hf, ckpt, images):
    """A video is the same tower with several temporal patches: embeddings and deepstack equal
    transformers' ``get_video_features`` on the same pixels, also when batched with an image."""
    from shared.multimodal.video import (
        VideoProcessorConfig,
        decode_video,
        plan_video,
        preprocess_video,
        probe_video,
    )
    from shared.multimodal.video_synth import make_video

    cfg = VideoProcessorConfig.from_checkpoint(ckpt)
    videos = []
    for frames, (w, h), fps in ((9, (96, 64), 4.0), (16, (64, 128), 8.0)):
        data = make_video(frames=frames, width=w, height=h, fps=fps, seed=frames)
        plan = plan_video(probe_video(data), cfg)
        videos.append((preprocess_video(decode_video(data, plan), plan, cfg), plan.grid_thw))
    assert all(g[0] >= 2 for _, g in videos)  # several temporal groups each
    with torch.no_grad():
        ref = hf.model.get_video_features(
            torch.cat([p for p, _ in videos]), torch.tensor([g for _, g in videos]), return_dict=True
        )
    image_pixels, image_grid = images[0]
    mixed = ours.get_image_feature(
        torch.cat([image_pixels, *(p for p, _ in videos)]), [image_grid, *(g for _, g in videos)]
    )
    alone = ours.get_video_feature(torch.cat([p for p, _ in videos]), [g for _, g in videos])
    for how, features in (("with an image", mixed[1:]), ("alone", alone)):
        for i, feature in enumerate(features):
            name = f"video {i} {how}"
            assert_close_scaled(feature.embeds, ref.pooler_output[i], name=f"{name} embeds")
            for level, ref_level in enumerate(ref.deepstack_features):
                assert_close_scaled(feature.deepstack[level], ref_level[i], name=f"{name} deepstack {level}")
