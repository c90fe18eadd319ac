"""Bad videos are refused with a message a client can read, at the cheapest stage that can tell."""

from __future__ import annotations

import numpy as np
import pytest

from shared.multimodal.video import (
    VideoError,
    VideoLimits,
    VideoProcessorConfig,
    decode_frame_list,
    decode_video,
    plan_video,
    probe_frames,
    probe_video,
)
from shared.multimodal.video_synth import (
    bad_frame_lists,
    bad_video_corpus,
    bad_video_limit_cases,
    corrupt_video_cases,
    make_frame_list,
    make_video,
)

pytestmark = pytest.mark.unit

CFG = VideoProcessorConfig(min_pixels=32 * 32 * 4, max_pixels=32 * 32 * 16)
PROBE = bad_video_corpus()
LIMITS = bad_video_limit_cases()
CORRUPT = corrupt_video_cases()
FRAME_LISTS = bad_frame_lists()


def test_corpus_is_large_enough() -> None:
    assert len(PROBE) + len(LIMITS) + len(CORRUPT) + len(FRAME_LISTS) >= 12
    assert len({name for name, *_ in PROBE}) == len(PROBE)


@pytest.mark.parametrize("name,data,message", PROBE, ids=[c[0] for c in PROBE])
def test_probe_refuses(name: str, data: bytes, message: str) -> None:
    with pytest.raises(VideoError, match=message.replace("(", r"\(")) as err:
        probe_video(data)
    assert "av." not in str(err.value) and "Errno" not in str(err.value)
    if name == "too long":
        return  # a valid file: decoding the frames a plan samples is bounded by the plan
    # The encoder, given the same bytes and some plan, refuses them as well.
    plan = plan_video(probe_video(make_video(4, 64, 48)), CFG)
    with pytest.raises(VideoError):
        decode_video(data, plan)


@pytest.mark.parametrize("name,data,message,limits", LIMITS, ids=[c[0] for c in LIMITS])
def test_limits(name: str, data: bytes, message: str, limits: VideoLimits) -> None:
    probe_video(data)  # fine under the default limits
    with pytest.raises(VideoError, match=message):
        probe_video(data, limits)


def test_decode_limits() -> None:
    data = make_video(12, 64, 48)
    plan = plan_video(probe_video(data), CFG, num_frames=12)

    with pytest.raises(VideoError, match="the limit is 3000 pixels per frame"):
        decode_video(data, plan, VideoLimits(max_frame_pixels=3000))
    with pytest.raises(VideoError, match="would take 110592 bytes decoded"):
        decode_video(data, plan, VideoLimits(max_decoded_bytes=100_000))
    with pytest.raises(VideoError, match="beyond the frame limit"):
        decode_video(data, plan, VideoLimits(max_total_frames=10))


@pytest.mark.parametrize("name,data,message", CORRUPT, ids=[c[0] for c in CORRUPT])
def test_corrupt_payload_refused_at_decode(name: str, data: bytes, message: str) -> None:
    probed = probe_video(data)  # the first frame is intact: the router cannot tell
    with pytest.raises(VideoError, match=message):
        decode_video(data, plan_video(probed, CFG, num_frames=probed.total_frames))


@pytest.mark.parametrize("name,frames,message", FRAME_LISTS, ids=[c[0] for c in FRAME_LISTS])
def test_frame_list_refused(name: str, frames: list[bytes], message: str) -> None:
    with pytest.raises(VideoError, match=message):
        probe_frames(frames, 2.0)


def test_frame_list_damage_found_at_decode() -> None:
    stills = make_frame_list(4, 32, 32)
    stills[2] = stills[2][: len(stills[2]) // 2]  # header intact, pixels cut off
    plan = plan_video(probe_frames(stills, 2.0), CFG)
    with pytest.raises(VideoError, match="frame 2: corrupt or truncated PNG"):
        decode_frame_list(stills, plan)
    with pytest.raises(VideoError, match="frame rate must be a positive number"):
        probe_frames(stills, float("nan"))


def test_random_damage_never_escapes_as_another_error() -> None:
    """Bytes flipped anywhere in a small video: each stage either works or raises VideoError."""
    good = make_video(6, 64, 48, codec="libx264")
    rng = np.random.default_rng(11)
    for trial in range(40):
        bad = bytearray(good)
        at = int(rng.integers(0, len(bad) - 16))
        bad[at : at + 16] = rng.integers(0, 256, 16, np.uint8).tobytes()
        if trial % 4 == 0:
            bad = bad[: int(rng.integers(1, len(bad)))]
        try:
            probed = probe_video(bytes(bad))
            decode_video(bytes(bad), plan_video(probed, CFG, num_frames=probed.total_frames), resample=3)
        except VideoError:
            pass
