"""The video fields of the wire: a video's sampling travels with it, and a video's rows go to its
timestamped temporal groups."""

from __future__ import annotations

import dataclasses

import pytest

from shared.wire import ImageInput, WireError, decode, encode
from shared.wire.messages import ImagePlacement, MRopeSegment, VideoSpec
from tests.wire.test_codec import H1, H2, prefill_request, request

pytestmark = pytest.mark.unit


def video_spec(**changes) -> VideoSpec:
    fields = dict(
        source="container", frame_lengths=[], indices=[0, 3, 6, 9], height=64, width=96, grid_thw=(2, 4, 6),
        timestamps=[0.2, 1.0], source_fps=4.0,
    )  # fmt: skip
    fields.update(changes)
    return VideoSpec(**fields)


def test_a_video_travels_with_its_sampling() -> None:
    msg = request(images=[ImageInput(0, H1, b"\x00\x00\x00\x18ftypmp42", video_spec()), ImageInput(1, H2)])
    got = decode(encode(msg))
    spec = got.images[0].video
    assert (spec.source, spec.indices, spec.grid_thw, spec.timestamps) == (
        "container",
        [0, 3, 6, 9],
        (2, 4, 6),
        [0.2, 1.0],
    )
    assert got.images[1].video is None


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"source": "gif"}, "does not match"),
        ({"source": "frames"}, "needs frame_lengths"),
        ({"frame_lengths": [10, 20]}, "no frame_lengths"),
        ({"indices": [3, 0]}, "non-decreasing"),
        ({"indices": []}, "outside"),
        ({"timestamps": [0.5]}, "1 timestamps for 2 temporal groups"),
    ],
)
def test_a_bad_video_spec_is_refused(changes: dict, match: str) -> None:
    with pytest.raises(WireError, match=match):
        encode(request(images=[ImageInput(0, H1, b"x", video_spec(**changes))]))


def test_video_placements_split_into_equal_groups() -> None:
    place = ImagePlacement(0, H1, 2, 12, [2, 9, 16])
    assert place.runs() == [(2, 6), (9, 13), (16, 20)]
    msg = prefill_request([])
    msg = dataclasses.replace(
        msg, prompt_token_ids=list(range(24)), images=[place], layout=[MRopeSegment(0, 24, 0, None)]
    )
    assert decode(encode(msg)).images[0].group_starts == [2, 9, 16]
    for bad, match in (
        ([3, 9, 16], "cannot start"),
        ([2, 4, 16], "overlap"),
        ([2, 9, 22], "leaves the prompt"),
    ):
        with pytest.raises(WireError, match=match):
            encode(dataclasses.replace(msg, images=[ImagePlacement(0, H1, 2, 12, bad)]))
