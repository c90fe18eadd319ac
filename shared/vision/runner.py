"""The encoder's compute: image or video bytes -> patches (CPU), patches of a batch -> embeddings
(device).

Owns the vision tower (loaded alone from the checkpoint) and the image and video processor settings
read from the same checkpoint. ``prepare`` runs on untrusted image bytes and turns every failure
into an ``ImageError``; ``prepare_video`` decodes the frames the router sampled (its ``VideoSpec``)
and turns every failure into a ``VideoError``; ``run`` encodes one batch, images and videos mixed,
with a single ``get_image_feature`` call (a video is an image with several temporal patches) and
hands back CPU tensors that own their memory (ready to cache and to send).
"""

from __future__ import annotations

from pathlib import Path

import torch

from shared.models.loader import load_model
from shared.models.qwen3_vl_moe import Qwen3VLMoeForConditionalGeneration
from shared.multimodal.image import ImageError, decode_image, image_hash
from shared.multimodal.video import (
    VideoError,
    VideoLimits,
    VideoPlan,
    VideoProcessorConfig,
    decode_frame_list,
    decode_video,
    frame_list_hash,
    preprocess_video,
    video_cache_key,
)
from shared.multimodal.vision_inputs import ImageProcessorConfig, preprocess_image
from shared.vision.batcher import PendingImage
from shared.vision.cache import CachedEmbedding
from shared.wire.messages import VideoSpec


class VisionRunner:
    def __init__(
        self,
        model_dir: str | Path,
        device: str = "cpu",
        dtype: str = "auto",
        model: Qwen3VLMoeForConditionalGeneration | None = None,
    ) -> None:
        """``model``: a loaded model with its vision tower to share (colocated serving); default:
        load the vision tower alone from ``model_dir``."""
        self.device = torch.device(device)
        if model is None:
            model = load_model(model_dir, parts={"vision"}, dtype=dtype, device=self.device)
        self.model = model
        self.processor = ImageProcessorConfig.from_checkpoint(model_dir)
        self.fingerprint = self.processor.fingerprint()
        self.video_processor = VideoProcessorConfig.from_checkpoint(model_dir)
        self.forwards = 0

    @property
    def dtype(self) -> torch.dtype:
        assert self.model.visual is not None
        return self.model.visual.dtype

    def cache_key(self, content_hash: str) -> str:
        return f"{content_hash}:{self.fingerprint}"

    def prepare(self, data: bytes, max_image_pixels: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Untrusted bytes -> (pixel_values [N, patch_dim] float32, grid (t, h, w))."""
        img = decode_image(data, max_image_pixels=max_image_pixels)
        try:
            pixel_values, grid = preprocess_image(img, self.processor)
        except ValueError as e:  # smart_resize's limits on extreme shapes
            raise ImageError(str(e)) from None
        finally:
            img.close()
        return pixel_values, (int(grid[0]), int(grid[1]), int(grid[2]))

    def prepare_video(
        self, data: bytes, spec: VideoSpec, content_hash: str, limits: VideoLimits
    ) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Untrusted video bytes + the router's sampling -> (pixel_values, grid (t, h, w))."""
        return video_pixels(data, spec, content_hash, self.video_processor, limits)

    def run(self, batch: list[PendingImage]) -> list[CachedEmbedding]:
        """One vision forward over the batch's images, in order."""
        pixel_values = torch.cat([im.pixel_values for im in batch]).to(self.device)  # [sum N, patch_dim]
        grids = [im.grid_thw for im in batch]
        features = self.model.get_image_feature(pixel_values, grids)
        self.forwards += 1
        return [
            CachedEmbedding(grid, _own_cpu(f.embeds), _own_cpu(f.deepstack))
            for grid, f in zip(grids, features, strict=True)
        ]


def video_pixels(
    data: bytes, spec: VideoSpec, content_hash: str, cfg: VideoProcessorConfig, limits: VideoLimits
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Decode and preprocess the frames the router chose -> (pixel_values, grid (t, h, w)).

    Raises VideoError when the bytes, the sampling and ``content_hash`` do not belong together or
    the frames cannot be decoded."""
    plan = plan_of(spec)
    frames = split_frames(data, spec.frame_lengths) if spec.source == "frames" else None
    raw = frame_list_hash(frames) if frames is not None else image_hash(data)
    if video_cache_key(raw, plan, cfg) != content_hash:
        raise VideoError("content_hash is not the key of these video bytes and this sampling")
    # Frames are resized as they are decoded: memory stays at the resized size.
    if frames is not None:
        pixels = decode_frame_list(frames, plan, limits, resample=cfg.resample)
    else:
        pixels = decode_video(data, plan, limits, resample=cfg.resample)
    pixel_values = preprocess_video(pixels, plan, cfg)
    t, h, w = plan.grid_thw
    if pixel_values.shape[0] != t * h * w:
        raise VideoError(f"the frames give {pixel_values.shape[0]} patches, not the grid {plan.grid_thw}")
    return pixel_values, (int(t), int(h), int(w))


def plan_of(spec: VideoSpec) -> VideoPlan:
    """The ``VideoPlan`` a ``VideoSpec`` carries (the inverse of ``router.jobs.video_spec``)."""
    t, h, w = spec.grid_thw
    return VideoPlan(
        tuple(spec.indices), spec.height, spec.width, (t, h, w), tuple(spec.timestamps), spec.source_fps
    )


def split_frames(data: bytes, lengths: list[int]) -> list[bytes]:
    """A frame list sent as one blob of concatenated stills."""
    if sum(lengths) != len(data):
        raise VideoError(f"frame lengths add up to {sum(lengths)} bytes, the data has {len(data)}")
    out, at = [], 0
    for n in lengths:
        out.append(data[at : at + n])
        at += n
    return out


def _own_cpu(t: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU tensor with its own storage (a view would pin the whole batch's output)."""
    if t.device.type != "cpu":
        return t.to("cpu").contiguous()
    return t.clone(memory_format=torch.contiguous_format)
