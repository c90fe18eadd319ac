"""Video preprocessing against transformers' Qwen3VLVideoProcessor / Qwen3VLProcessor.

Sampling, sizes, grids, timestamps and pixel values are compared with transformers' own
functions. transformers' video processor needs torchvision for two leaf operations, which this
environment lacks: its final resize (replaced by a stub that returns the size it was asked for, so
the size rule above it is transformers') and ``tvF.normalize`` (replaced by torchvision's
``normalize_image`` arithmetic: float32 mean/std tensors, subtract, then divide).
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import av
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import image_processing_backends
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
from transformers.video_utils import VideoMetadata, read_video_pyav

from shared.multimodal.video import (
    VideoError,
    VideoInfo,
    VideoPlan,
    VideoProcessorConfig,
    decode_frame_list,
    decode_video,
    frame_list_hash,
    plan_video,
    preprocess_video,
    probe_frames,
    probe_video,
    video_cache_key,
)
from shared.multimodal.video_synth import frame_pixels, make_frame_list, make_video

pytestmark = pytest.mark.unit

DEMO_DIR = Path(__file__).resolve().parents[2] / "shared" / "assets" / "demo"
DEFAULT = VideoProcessorConfig()
SMALL = VideoProcessorConfig(min_pixels=32 * 32 * 4, max_pixels=32 * 32 * 40, min_frames=2, max_frames=12)


def hf(cfg: VideoProcessorConfig) -> Qwen3VLVideoProcessor:
    return Qwen3VLVideoProcessor(**cfg.to_hf_kwargs())


def info(total: int, fps: float, height: int = 48, width: int = 64) -> VideoInfo:
    return VideoInfo(total, fps, height, width, "test", total / fps, "container")


def _tv_normalize(image: torch.Tensor, mean: Any, std: Any, inplace: bool = False) -> torch.Tensor:
    """torchvision.transforms.v2.functional.normalize_image's arithmetic."""
    mean = torch.as_tensor(mean, dtype=image.dtype).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=image.dtype).view(-1, 1, 1)
    return (image.sub_(mean) if inplace else image.sub(mean)).div_(std)


@pytest.fixture
def hf_leaves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        image_processing_backends, "tvF", SimpleNamespace(normalize=_tv_normalize), raising=False
    )
    monkeypatch.setattr(
        image_processing_backends.TorchvisionBackend,
        "resize",
        lambda self, image, size, resample=None, **kw: (size.height, size.width),
    )


# --- configuration -------------------------------------------------------------------------------


def test_defaults_are_transformers_class_defaults() -> None:
    ref = Qwen3VLVideoProcessor()
    size = cast(Any, ref.size)
    assert (DEFAULT.min_pixels, DEFAULT.max_pixels) == (size.shortest_edge, size.longest_edge)
    for name in ("patch_size", "temporal_patch_size", "merge_size", "fps", "min_frames", "max_frames"):
        assert getattr(DEFAULT, name) == getattr(ref, name), name
    assert DEFAULT.max_video_tokens == ref.max_video_tokens and DEFAULT.resample == ref.resample
    assert DEFAULT.image_mean == tuple(ref.image_mean) and DEFAULT.rescale_factor == ref.rescale_factor


def test_from_checkpoint(tmp_path: Path) -> None:
    cfg = VideoProcessorConfig.from_checkpoint(DEMO_DIR)
    raw = json.loads((DEMO_DIR / "video_preprocessor_config.json").read_text())
    assert (cfg.min_pixels, cfg.max_pixels) == (raw["size"]["shortest_edge"], raw["size"]["longest_edge"])
    assert cfg.fps == 2.0 and cfg.max_frames == 768 and cfg.extra["processor_class"] == "Qwen3VLProcessor"
    assert VideoProcessorConfig.from_checkpoint(tmp_path) == DEFAULT
    assert VideoProcessorConfig.from_dict({"cap_pixels_per_frame": None}).cap_pixels_per_frame is False
    assert cfg.fingerprint() != DEFAULT.fingerprint()
    assert VideoProcessorConfig(fps=1.0).fingerprint() != DEFAULT.fingerprint()


# --- plan: sampling, size, grid, timestamps ------------------------------------------------------

SAMPLING = [
    # (total frames, source fps, target fps, config)
    (1, 30.0, None, DEFAULT),
    (3, 30.0, None, DEFAULT),
    (10, 4.0, None, DEFAULT),
    (97, 29.97, None, DEFAULT),
    (300, 30.0, None, DEFAULT),
    (300, 30.0, 0.5, DEFAULT),
    (301, 24.0, 7.0, DEFAULT),
    (2000, 25.0, 24.0, DEFAULT),
    (36000, 60.0, None, DEFAULT),
    (50, 10.0, None, SMALL),
    (500, 10.0, 3.0, SMALL),
    (7, 1.0, 0.3, SMALL),
    (120, 30.0, None, VideoProcessorConfig(min_frames=9, max_frames=15)),
]


@pytest.mark.parametrize("case", SAMPLING, ids=[f"{c[0]}f@{c[1]}->{c[2]}" for c in SAMPLING])
def test_sampling_and_timestamps_match_transformers(
    case: tuple[int, float, float | None, VideoProcessorConfig],
) -> None:
    total, src_fps, target, cfg = case
    plan = plan_video(info(total, src_fps), cfg, fps=target)
    ref = hf(cfg).sample_frames(VideoMetadata(total_num_frames=total, fps=src_fps), fps=target)
    assert list(plan.indices) == ref.tolist()
    bare = Qwen3VLProcessor.__new__(Qwen3VLProcessor)  # the method uses no state
    stamps = bare._calculate_timestamps(ref, src_fps, cfg.temporal_patch_size)
    assert list(plan.timestamps) == stamps
    assert plan.grid_thw[0] == len(stamps) and plan.source_fps == src_fps


@pytest.mark.parametrize("num_frames", [1, 2, 5, 16, 40])
def test_num_frames_matches_transformers(num_frames: int) -> None:
    plan = plan_video(info(30, 10.0), DEFAULT, num_frames=num_frames)
    ref = hf(DEFAULT).sample_frames(VideoMetadata(total_num_frames=30, fps=10.0), num_frames=num_frames)
    assert list(plan.indices) == ref.tolist()  # 40 > 30 frames: transformers repeats some


SIZES = [(48, 64), (480, 640), (1080, 1920), (1920, 1080), (20, 300), (17, 23), (4000, 3000)]
FRAME_COUNTS = [2, 3, 8, 33, 768]


@pytest.mark.parametrize("cap", [False, True])
@pytest.mark.parametrize(
    "cfg", [DEFAULT, SMALL, VideoProcessorConfig.from_checkpoint(DEMO_DIR)], ids=["default", "small", "demo"]
)
def test_size_and_grid_match_transformers(cfg: VideoProcessorConfig, cap: bool, hf_leaves: None) -> None:
    cfg = replace(cfg, cap_pixels_per_frame=cap, max_frames=1000)
    ref = hf(cfg)
    for height, width in SIZES:
        for t in FRAME_COUNTS:
            plan = plan_video(info(t, 2.0, height, width), cfg, num_frames=t)
            video = cast(Any, SimpleNamespace(shape=(1, t, 3, height, width)))  # only its shape is read
            size = ref.resize(
                video,
                size=cast(Any, ref.size),
                resample=3,
                factor=cfg.factor,
                temporal_factor=2,
                cap_pixels_per_frame=cap,
            )
            assert (plan.height, plan.width) == size, (height, width, t)
            patches = ref.get_num_of_video_patches(t, height, width, {"cap_pixels_per_frame": cap})
            assert int(np.prod(plan.grid_thw)) == patches


def test_short_videos_are_padded_not_refused() -> None:
    plan = plan_video(info(1, 25.0), DEFAULT)
    assert plan.indices == (0,) and plan.grid_thw[0] == 1 and plan.timestamps == (0.0,)
    plan = plan_video(info(5, 5.0), DEFAULT)  # min_frames 4 -> 4 frames, 2 groups
    assert plan.indices == (0, 1, 3, 4) and plan.timestamps == (0.1, 0.7)


def test_plan_refusals() -> None:
    with pytest.raises(VideoError, match="mutually exclusive"):
        plan_video(info(10, 2.0), DEFAULT, fps=1.0, num_frames=4)
    with pytest.raises(VideoError, match="num_frames must be an integer from 1 to 768"):
        plan_video(info(10, 2.0), DEFAULT, num_frames=769)
    with pytest.raises(VideoError, match="positive number"):
        plan_video(info(10, 2.0), DEFAULT, fps=0.0)
    with pytest.raises(VideoError, match="aspect ratio"):
        plan_video(info(10, 2.0, 40, 9000), DEFAULT)
    with pytest.raises(VideoError, match="at most 768 can be used"):
        plan_video(info(800, 2.0), VideoProcessorConfig(do_sample_frames=False))
    with pytest.raises(VideoError, match="not multiples of 32"):
        plan_video(info(10, 2.0, 48, 64), VideoProcessorConfig(do_resize=False))
    every = plan_video(info(6, 2.0, 64, 96), VideoProcessorConfig(do_sample_frames=False, do_resize=False))
    assert every.indices == tuple(range(6)) and every.grid_thw == (3, 4, 6)


# --- pixel values --------------------------------------------------------------------------------

PIXEL_CONFIGS = [
    SMALL,
    VideoProcessorConfig(
        min_pixels=32 * 32 * 4,
        max_pixels=32 * 32 * 24,
        image_mean=(0.48145466, 0.4578275, 0.40821073),
        image_std=(0.26862954, 0.26130258, 0.27577711),
    ),
    VideoProcessorConfig(min_pixels=32 * 32 * 4, max_pixels=32 * 32 * 24, do_normalize=False),
    VideoProcessorConfig(min_pixels=32 * 32 * 4, max_pixels=32 * 32 * 24, resample=2, temporal_patch_size=3),
]


@pytest.mark.parametrize("frames", [4, 5])
@pytest.mark.parametrize("cfg", PIXEL_CONFIGS, ids=["qwen", "clip-mean", "rescale-only", "bilinear-t3"])
def test_pixel_values_match_transformers(cfg: VideoProcessorConfig, frames: int, hf_leaves: None) -> None:
    rng = np.random.default_rng(frames)
    video = rng.integers(0, 256, (frames, 70, 90, 3), dtype=np.uint8)
    plan = plan_video(info(frames, 2.0, 70, 90), cfg, num_frames=frames)
    ours = preprocess_video(video, plan, cfg)

    resized = np.stack(
        [np.asarray(Image.fromarray(f).resize((plan.width, plan.height), cfg.resample)) for f in video]
    )
    ref = hf(cfg)
    x = torch.from_numpy(resized).permute(0, 3, 1, 2)[None]  # [1, F, C, H, W] uint8
    mean, std = cast(Any, cfg.image_mean), cast(Any, cfg.image_std)  # tuples, as transformers passes them
    x = ref.rescale_and_normalize(x, cfg.do_rescale, cfg.rescale_factor, cfg.do_normalize, mean, std)
    patches, *grid = ref.patchify(x, cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size)
    assert tuple(grid) == plan.grid_thw
    print(f"max abs diff {(ours - patches[0]).abs().max().item():.3g}")
    assert ours.dtype == torch.float32 and torch.equal(ours, patches[0])


def test_preprocess_refuses_wrong_frames() -> None:
    plan = plan_video(info(4, 2.0), SMALL, num_frames=4)
    with pytest.raises(VideoError, match="the plan samples 4 frames, 3 were given"):
        preprocess_video(np.zeros((3, 48, 64, 3), np.uint8), plan, SMALL)
    with pytest.raises(VideoError, match="expected"):
        preprocess_video(np.zeros((4, 48, 64), np.uint8), plan, SMALL)


# --- probing and decoding ------------------------------------------------------------------------

CONTAINERS = [
    ("mpeg4", "mp4", 4.0),
    ("libx264", "mp4", 29.97),
    ("libvpx-vp9", "webm", 5.0),
    ("libx264", "mkv", 8.0),
    ("mjpeg", "avi", 3.0),
]


@pytest.mark.parametrize("codec,container,fps", CONTAINERS, ids=[f"{c[0]}-{c[1]}" for c in CONTAINERS])
def test_probe_and_decode_match_plain_pyav(codec: str, container: str, fps: float) -> None:
    data = make_video(11, 64, 48, fps=fps, codec=codec, container=container)
    probed = probe_video(data)
    assert (probed.total_frames, probed.height, probed.width, probed.source) == (11, 48, 64, "container")
    assert probed.fps == pytest.approx(fps, rel=1e-6) and probed.duration_s == pytest.approx(
        11 / fps, rel=1e-6
    )

    plan = plan_video(probed, SMALL, num_frames=5)
    frames = decode_video(data, plan)
    with av.open(io.BytesIO(data), mode="r") as c:
        everything = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert frames.shape == (5, 48, 64, 3) and np.array_equal(frames, everything[list(plan.indices)])
    # The encoded content is what frame_pixels drew (lossy codecs: close, not equal).
    assert np.abs(frames[1].astype(int) - frame_pixels(plan.indices[1], 64, 48)).mean() < 12
    if container != "webm":  # transformers takes the frame count from the container header, absent in WebM
        source = cast(Any, io.BytesIO(data))  # av.open takes file objects as well as paths
        ref, _ = read_video_pyav(source, sample_indices_fn=lambda metadata, **kw: np.array(plan.indices))
        assert np.array_equal(frames, ref)


def test_decode_resized_and_repeated_frames() -> None:
    data = make_video(6, 64, 48)
    plan = plan_video(probe_video(data), SMALL, num_frames=9)  # more than the video has: repeats
    assert len(set(plan.indices)) == 6 and len(plan.indices) == 9
    full = decode_video(data, plan)
    small = decode_video(data, plan, resample=SMALL.resample)
    assert small.shape == (9, plan.height, plan.width, 3)
    assert torch.equal(preprocess_video(full, plan, SMALL), preprocess_video(small, plan, SMALL))


def test_decode_shorter_than_planned() -> None:
    data = make_video(6, 64, 48)
    plan = VideoPlan((0, 7), 64, 64, (1, 4, 4), (0.875,), 4.0)
    with pytest.raises(VideoError, match="ended after 6 frames, but frame 7 was sampled"):
        decode_video(data, plan)


def test_frame_list() -> None:
    stills = make_frame_list(7, 40, 30, fmt="JPEG")
    probed = probe_frames(stills, 3.0)
    assert probed == VideoInfo(7, 3.0, 30, 40, "images", 7 / 3.0, "frames")
    plan = plan_video(probed, DEFAULT)
    frames = decode_frame_list(stills, plan)
    expect = np.stack([np.asarray(Image.open(io.BytesIO(stills[i])).convert("RGB")) for i in plan.indices])
    assert np.array_equal(frames, expect)
    assert decode_frame_list(stills, plan, resample=3).shape == (
        len(plan.indices),
        plan.height,
        plan.width,
        3,
    )


def test_cache_keys() -> None:
    data = make_video(8, 64, 48)
    changed = make_video(8, 64, 48, vary_frame=6)
    assert data != changed and probe_video(data) == probe_video(changed)
    plan = plan_video(probe_video(data), SMALL)
    key = video_cache_key("c0ffee", plan, SMALL)
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert key == video_cache_key("c0ffee", plan_video(probe_video(data), SMALL), SMALL)
    assert key != video_cache_key("c0ffef", plan, SMALL)
    assert key != video_cache_key("c0ffee", plan_video(probe_video(data), SMALL, num_frames=3), SMALL)
    assert key != video_cache_key("c0ffee", plan, replace(SMALL, image_std=(0.3,) * 3))
    assert frame_list_hash([b"ab", b"c"]) != frame_list_hash([b"a", b"bc"]) != frame_list_hash([b"abc"])
    stills = make_frame_list(3, 16, 16)
    assert frame_list_hash(stills) == frame_list_hash(list(stills))
    assert frame_list_hash(stills) != frame_list_hash(make_frame_list(3, 16, 16, vary_frame=2))
