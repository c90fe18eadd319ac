"""Reassembling one request's image embeddings from any number of encoders, in any order.

The router may spread a request's images over several encoders; each ``ImageEmbeddingResult``
carries its image index, so the receiving side (prefill) collects them here and reads them back in
prompt order. A ``StageError`` for any image (or for the whole request) fails the set.
"""

from __future__ import annotations

import torch

from shared.wire.messages import ImageEmbeddingResult, StageError


class ImageSet:
    def __init__(self, request_id: str, num_images: int) -> None:
        self.request_id = request_id
        self.num_images = num_images
        self.results: dict[int, ImageEmbeddingResult] = {}
        self.errors: list[StageError] = []

    def add(self, msg: ImageEmbeddingResult | StageError) -> None:
        """Take one message for this request; a repeated image index keeps the first result."""
        if msg.request_id != self.request_id:
            raise ValueError(f"message for request {msg.request_id!r} given to {self.request_id!r}")
        if isinstance(msg, StageError):
            self.errors.append(msg)
            return
        if not 0 <= msg.image_index < self.num_images:
            raise ValueError(f"image index {msg.image_index} outside [0, {self.num_images})")
        self.results.setdefault(msg.image_index, msg)

    @property
    def failed(self) -> bool:
        return bool(self.errors)

    @property
    def complete(self) -> bool:
        return len(self.results) == self.num_images

    @property
    def done(self) -> bool:
        return self.failed or self.complete

    def ordered(self) -> list[ImageEmbeddingResult]:
        if not self.complete:
            missing = sorted(set(range(self.num_images)) - set(self.results))
            raise ValueError(f"request {self.request_id}: images {missing} have not arrived")
        return [self.results[i] for i in range(self.num_images)]

    def embeds(self) -> torch.Tensor:
        """All images' embeddings in prompt order: [sum n, H]."""
        return torch.cat([r.embeds for r in self.ordered()])

    def deepstack(self) -> torch.Tensor:
        """All images' deepstack embeddings in prompt order: [S, sum n, H]."""
        return torch.cat([r.deepstack for r in self.ordered()], dim=1)
