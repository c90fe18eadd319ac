"""The vision half of colocated serving: the images of admitted jobs -> embeddings, batched across jobs.

It reuses the encoder service's parts in-process: ``VisionRunner`` (preprocessing, one
``get_image_feature`` call per batch), ``PatchBatcher`` (batches across requests under a patch
budget; an image already queued is encoded once for every job that wants it) and
``EmbeddingCache`` (by content hash and preprocessing settings).

Life cycle of one job's images (all on the backend's thread):

1. ``add``: each image is taken from the cache, joins an identical queued image, or is decoded,
   preprocessed and queued. A bad image raises ``ImageError`` at once.
2. ``run``: the next batch goes through the vision tower; the jobs whose last image has now
   arrived come back with their features, in image order. A failed forward fails its jobs.
3. ``cancel``: a job that ended (aborted, timed out) is forgotten; its queued images are dropped
   when no other job waits for them.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

from router.jobs import LoadedImage
from shared.multimodal.image import DEFAULT_MAX_IMAGE_PIXELS, ImageError
from shared.multimodal.video import VideoLimits
from shared.vision.batcher import PatchBatcher, PendingImage, Waiter
from shared.vision.cache import CachedEmbedding, EmbeddingCache
from shared.vision.runner import VisionRunner

log = logging.getLogger("router.colocated")


@dataclass
class ImageJob:
    rid: str
    features: list[CachedEmbedding | None]  # by image index; None until encoded
    waiters: list[Waiter] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return all(f is not None for f in self.features)


@dataclass
class Encoded:
    done: list[ImageJob] = field(default_factory=list)  # every feature present
    failed: dict[str, str] = field(default_factory=dict)  # rid -> why


class VisionStage:
    def __init__(
        self, runner: VisionRunner, patch_budget: int, cache_bytes: int,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:  # fmt: skip
        self.runner, self.max_image_pixels = runner, max_image_pixels
        self.video_limits = VideoLimits()  # the router checked the file against its own limits
        self.batcher = PatchBatcher(patch_budget)
        self.cache = EmbeddingCache(cache_bytes)
        self.jobs: dict[str, ImageJob] = {}  # jobs with images still to encode

    def __len__(self) -> int:
        return len(self.batcher)

    def add(self, rid: str, images: list[LoadedImage]) -> ImageJob:
        """Raises ``ImageError`` (naming the image) when an image cannot be decoded or preprocessed."""
        job = ImageJob(rid, [None] * len(images))
        for i, im in enumerate(images):
            key = self.runner.cache_key(im.hash)
            # Job deadlines are enforced by the backend, which cancels the job: no waiter expires.
            waiter = Waiter(rid, i, "", math.inf, time.monotonic())
            if (queued := self.batcher.find(key)) is not None:
                queued.waiters.append(waiter)
                job.waiters.append(waiter)
            elif (cached := self.cache.get(key) if self.cache.max_bytes else None) is not None:
                job.features[i] = cached
            else:
                try:
                    if im.video is None:
                        pixels, grid = self.runner.prepare(im.data, self.max_image_pixels)
                    else:
                        pixels, grid = self.runner.prepare_video(
                            im.data, im.video, im.hash, self.video_limits
                        )
                except Exception as e:  # Image/VideoError, or anything the media libraries did not expect
                    self._forget(job)
                    raise ImageError(f"{'image' if im.video is None else 'video'} {i}: {e}") from None
                self.batcher.add(PendingImage(key, im.hash, pixels, grid, [waiter]))
                job.waiters.append(waiter)
        if not job.done:
            self.jobs[rid] = job
        return job

    def run(self) -> Encoded:
        out = Encoded()
        batch = self.batcher.next_batch()
        if not batch:
            return out
        try:
            features = self.runner.run(batch)
        except Exception as e:  # a failed forward fails its jobs, never the loop
            log.exception("vision forward failed for %d images", len(batch))
            for rid in dict.fromkeys(w.request_id for im in batch for w in im.waiters):
                out.failed[rid] = f"vision forward failed: {type(e).__name__}: {e}"
                self.cancel(rid)
            return out
        for image, feature in zip(batch, features, strict=True):
            if self.cache.max_bytes:
                self.cache.put(image.key, feature)
            for w in image.waiters:
                if (job := self.jobs.get(w.request_id)) is not None:
                    job.features[w.image_index] = feature
        for rid in dict.fromkeys(w.request_id for im in batch for w in im.waiters):
            if (job := self.jobs.get(rid)) is not None and job.done:
                out.done.append(self.jobs.pop(rid))
        return out

    def cancel(self, rid: str) -> None:
        if (job := self.jobs.pop(rid, None)) is not None:
            self._forget(job)

    def _forget(self, job: ImageJob) -> None:
        for w in job.waiters:
            w.deadline = 0.0  # expire() drops these waiters, and images nobody else waits for
        self.batcher.expire(time.time())
