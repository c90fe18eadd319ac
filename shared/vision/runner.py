"""The encoder's compute: image bytes -> patches (CPU), patches of a batch -> embeddings (device).

Owns the vision tower (loaded alone from the checkpoint) and the image processor settings read from
the same checkpoint. ``prepare`` runs on untrusted bytes and turns every failure into an
``ImageError``; ``run`` encodes one batch with a single ``get_image_feature`` call and hands back
CPU tensors that own their memory (ready to cache and to send).
"""

from __future__ import annotations

from pathlib import Path

import torch

from shared.models.loader import load_model
from shared.models.qwen3_vl_moe import Qwen3VLMoeForConditionalGeneration
from shared.multimodal.image import ImageError, decode_image
from shared.multimodal.vision_inputs import ImageProcessorConfig, preprocess_image
from shared.vision.batcher import PendingImage
from shared.vision.cache import CachedEmbedding


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


def _own_cpu(t: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU tensor with its own storage (a view would pin the whole batch's output)."""
    if t.device.type != "cpu":
        return t.to("cpu").contiguous()
    return t.clone(memory_format=torch.contiguous_format)
