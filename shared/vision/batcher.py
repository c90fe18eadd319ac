"""Cross-request batching of waiting images under a patch budget.

Rule (one line each):
* the oldest waiting image is always in the next batch, so nothing waits forever, and an image
  larger than the budget runs alone when its turn comes;
* the rest of the budget is filled first-fit in arrival order, so small images flow past a large
  one that does not fit instead of queueing behind it (a large image never starves small ones);
* with cross-request batching off, only images of the oldest image's request join it;
* before choosing, waiters past their deadline are removed (and returned, to be told), and an image
  nobody waits for any more is dropped.

An image may have several waiters: the same content requested again while it is still queued
joins the queued image instead of being encoded twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from shared.timeline import RequestClock

# Patches per forward when none is configured. CPU (measured in docs/BENCHMARKS.md): past ~4096
# patches a forward loses cache locality; a GPU wants large batches to fill its SMs.
CPU_PATCH_BUDGET, GPU_PATCH_BUDGET = 4096, 16384


def default_patch_budget(device: str) -> int:
    return CPU_PATCH_BUDGET if device == "cpu" else GPU_PATCH_BUDGET


@dataclass
class Waiter:
    """One (request, image index) that wants an image's embedding, and where to deliver it."""

    request_id: str
    image_index: int
    reply_to: str
    deadline: float
    received_at: float  # time.monotonic() when the request arrived
    clock: RequestClock | None = None  # the request's clock (stamps); None: not stamped
    traceparent: str = ""  # the request's trace ("": not traced)


@dataclass(eq=False)  # identity: the queue removes by object, and tensors have no ==
class PendingImage:
    key: str  # cache key: content hash + preprocessing fingerprint
    content_hash: str
    pixel_values: torch.Tensor  # [N, patch_dim] float32
    grid_thw: tuple[int, int, int]
    waiters: list[Waiter] = field(default_factory=list)

    @property
    def num_patches(self) -> int:
        return self.pixel_values.shape[0]


class PatchBatcher:
    def __init__(self, patch_budget: int, cross_request: bool = True) -> None:
        self.patch_budget = patch_budget
        self.cross_request = cross_request
        self._queue: list[PendingImage] = []  # arrival order
        self._by_key: dict[str, PendingImage] = {}

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def queued_patches(self) -> int:
        return sum(im.num_patches for im in self._queue)

    def find(self, key: str) -> PendingImage | None:
        return self._by_key.get(key)

    def add(self, image: PendingImage) -> None:
        if image.key in self._by_key:
            raise ValueError(f"image {image.key} is already queued; add a waiter to it instead")
        self._queue.append(image)
        self._by_key[image.key] = image

    def expire(self, now: float) -> list[Waiter]:
        """Remove and return waiters whose deadline (Unix time) has passed."""
        expired: list[Waiter] = []
        for image in self._queue:
            keep = [w for w in image.waiters if w.deadline >= now]
            if len(keep) != len(image.waiters):
                expired += [w for w in image.waiters if w.deadline < now]
                image.waiters = keep
        for image in [im for im in self._queue if not im.waiters]:
            self._remove(image)
        return expired

    def next_batch(self) -> list[PendingImage]:
        """Take the next batch off the queue (empty when nothing waits)."""
        if not self._queue:
            return []
        head = self._queue[0]
        batch, used = [head], head.num_patches
        owner = head.waiters[0].request_id
        for image in self._queue[1:]:
            if used >= self.patch_budget:
                break
            if not self.cross_request and all(w.request_id != owner for w in image.waiters):
                continue
            if used + image.num_patches <= self.patch_budget:
                batch.append(image)
                used += image.num_patches
        for image in batch:
            self._remove(image)
        return batch

    def _remove(self, image: PendingImage) -> None:
        self._queue.remove(image)
        del self._by_key[image.key]
