"""ImageSet: one request's images from several encoders, in any order, read back in prompt order."""

from __future__ import annotations

import pytest
import torch

from shared.wire import ErrorKind, ImageEmbeddingResult, Stage, StageError
from shared.wire.assembly import ImageSet

pytestmark = pytest.mark.unit


def part(index: int, n: int) -> ImageEmbeddingResult:
    embeds = torch.full((n, 4), float(index))
    return ImageEmbeddingResult("r", index, "e" * 64, (1, 2, 2 * n), embeds, torch.stack([embeds, -embeds]))


def test_any_arrival_order_gives_prompt_order() -> None:
    images = ImageSet("r", 3)
    for index, n in [(2, 3), (0, 1), (1, 2)]:
        assert not images.done
        images.add(part(index, n))
    assert images.complete and not images.failed
    assert images.embeds()[:, 0].tolist() == [0, 1, 1, 2, 2, 2]
    assert images.deepstack().shape == (2, 6, 4)


def test_error_fails_the_set_and_strangers_are_refused() -> None:
    images = ImageSet("r", 2)
    images.add(part(0, 1))
    images.add(StageError("r", 1, ErrorKind.BAD_IMAGE, "truncated", "encoder", Stage.ENCODER))
    assert images.done and images.failed and not images.complete
    with pytest.raises(ValueError, match="have not arrived"):
        images.embeds()
    with pytest.raises(ValueError, match="given to"):
        images.add(StageError("other", 0, ErrorKind.INTERNAL, "x", "e", Stage.ENCODER))
    with pytest.raises(ValueError, match="outside"):
        images.add(part(5, 1))
