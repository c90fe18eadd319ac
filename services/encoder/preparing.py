"""Image and video bytes turned into pixel rows on worker threads, off the encoder's loop.

What it owns: the images being prepared (checked against their content hash, decoded, resized,
normalised and cut into patches by ``VisionRunner``), keyed by cache key so that a request for
content already being prepared joins it instead of preparing it again, and the threads that do
the work. PIL, PyAV and numpy release the GIL for the heavy parts, and so does the vision forward:
a picture decodes on one core while the loop's forward runs on another, where before the loop
decoded every image of a request before it could run the next forward.

The loop submits in its receive stage (``submit``) and collects in the next (``finished``: never
blocks). When it has nothing queued to run it first waits for what is being prepared (``wait``,
bounded), so that an idle encoder still encodes a burst of images in one forward, as when it
prepared them inline. ``--prepare-threads 0`` prepares inline (``prepare`` in the caller's thread).
"""

from __future__ import annotations

import concurrent.futures as cf
from dataclasses import dataclass

import torch

from shared.multimodal.image import image_hash
from shared.multimodal.video import VideoLimits
from shared.vision.batcher import Waiter
from shared.vision.runner import VisionRunner
from shared.wire import ImageInput

Pixels = tuple[torch.Tensor, tuple[int, int, int]]  # pixel_values [N, patch_dim], grid (t, h, w)


class HashMismatch(ValueError):
    """The bytes are not those ``content_hash`` names (a router's bug or a forged message)."""


@dataclass(eq=False)
class Preparing:
    """One image (or video) on its way to the patch queue, and everyone waiting for it."""

    key: str
    image: ImageInput
    waiters: list[Waiter]
    future: cf.Future[Pixels]

    def result(self) -> Pixels:
        """The pixel rows, or the preparation's exception (ImageError, VideoError, HashMismatch...)."""
        return self.future.result()


def prepare(
    runner: VisionRunner, image: ImageInput, max_image_pixels: int, video_limits: VideoLimits
) -> Pixels:
    """Check the bytes against their hash, then decode and preprocess them (any thread)."""
    assert image.data is not None
    if image.video is None:
        if image_hash(image.data) != image.content_hash:
            raise HashMismatch("content_hash is not the SHA-256 of the image bytes")
        return runner.prepare(image.data, max_image_pixels)
    return runner.prepare_video(image.data, image.video, image.content_hash, video_limits)


class PreparePool:
    def __init__(
        self, runner: VisionRunner, threads: int, max_image_pixels: int, video_limits: VideoLimits,
        max_preparing: int,
    ) -> None:  # fmt: skip
        self.runner, self.max_image_pixels, self.video_limits = runner, max_image_pixels, video_limits
        self.max_preparing = max_preparing
        self._pool = (
            cf.ThreadPoolExecutor(threads, thread_name_prefix="encoder-prepare") if threads > 0 else None
        )
        self._by_key: dict[str, Preparing] = {}  # submission order

    def __len__(self) -> int:
        return len(self._by_key)

    def find(self, key: str) -> Preparing | None:
        return self._by_key.get(key)

    def can_submit(self) -> bool:
        """False: prepare inline (no threads, or ``max_preparing`` images already on their way)."""
        return self._pool is not None and len(self._by_key) < self.max_preparing

    def submit(self, image: ImageInput, key: str, waiter: Waiter) -> None:
        assert self._pool is not None and key not in self._by_key
        future = self._pool.submit(prepare, self.runner, image, self.max_image_pixels, self.video_limits)
        self._by_key[key] = Preparing(key, image, [waiter], future)

    def prepare_inline(self, image: ImageInput) -> Pixels:
        return prepare(self.runner, image, self.max_image_pixels, self.video_limits)

    def finished(self) -> list[Preparing]:
        """The images whose preparation ended (well or not), in submission order; never blocks."""
        done = [p for p in self._by_key.values() if p.future.done()]
        for p in done:
            del self._by_key[p.key]
        return done

    def wait(self, timeout: float) -> None:
        """Block until every image being prepared is ready, at most ``timeout`` seconds."""
        if self._by_key:
            cf.wait([p.future for p in self._by_key.values()], timeout=timeout)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
