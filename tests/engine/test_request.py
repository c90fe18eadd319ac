"""A request's images and videos as the engine takes them: one input per run of placeholder tokens."""

from __future__ import annotations

import pytest
import torch

from shared.engine.request import ImageInput, Request, vision_inputs

pytestmark = pytest.mark.unit

IMG, VID, H, S = 7, 8, 4, 2


def features(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(n * H, dtype=torch.float32).view(n, H), torch.zeros(S, n, H)


def test_a_video_splits_into_its_groups_in_order_each_keyed_apart():
    embeds, deepstack = features(6)
    inputs = vision_inputs(embeds, deepstack, "v", [(2, 4), (6, 8), (10, 12)])
    assert [(i.start, i.num_tokens, i.content_hash) for i in inputs] == [
        (2, 2, "v#0"),
        (6, 2, "v#1"),
        (10, 2, "v#2"),
    ]
    assert torch.equal(torch.cat([i.embeds for i in inputs]), embeds)
    (image,) = vision_inputs(embeds, deepstack, "i", [(3, 9)])
    assert (image.start, image.content_hash) == (3, "i")
    with pytest.raises(ValueError, match="do not split"):
        vision_inputs(embeds, deepstack, "v", [(0, 2), (4, 7)])


def test_validate_takes_image_and_video_placeholders():
    ids = [1, IMG, IMG, 2, VID, VID, 3, VID, VID, 4]
    inputs = [ImageInput(*features(2), "i", 1), *vision_inputs(*features(4), "v", [(4, 6), (7, 9)])]
    positions = torch.arange(len(ids)).expand(3, -1)
    Request("r", ids, positions=positions, images=inputs).validate({IMG, VID}, S, H)
    with pytest.raises(ValueError, match="without image features"):  # the second group missing
        Request("r", ids, positions=positions, images=inputs[:2]).validate({IMG, VID}, S, H)
    with pytest.raises(ValueError, match="does not cover image tokens"):  # video tokens unknown
        Request("r", ids, positions=positions, images=inputs).validate({IMG}, S, H)
