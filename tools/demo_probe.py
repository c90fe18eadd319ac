"""Training-only help for the demo's vision tower: dense labels per image token and probe heads.

Learning shapes from the answers alone is slow for a tiny vision tower trained from scratch (the
language model must first learn where to look before any gradient says what a star is). So during
training, linear heads read the tower's outputs (the merged tokens and each deepstack level) and
are taught, per image token, the colour of the shape under it and its 3 x 3 cell, and per shape
(the mean of its tokens) its kind and region. ``train_demo`` first runs the tower alone on this probe loss
(``warmup_pictures`` batches, cheap: no language model), then keeps it as an extra term. The heads
are thrown away: they never reach the checkpoint, and the model's math is untouched.

Shape legend: M image tokens, H hidden.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from shared.models.qwen3_vl_moe import Qwen3VLMoeForConditionalGeneration
from shared.multimodal.vision_inputs import ImageProcessorConfig, preprocess_image
from tools.demo_scenes import COLOURS, REGIONS, SHAPES, Scene, render, sample_scene, token_labels


def scene_token_labels(
    scene: Scene, grid: tuple[int, int, int], merge: int, first_shape: int = 0
) -> torch.Tensor:
    """[M, 5] per image token (row-major over the merged grid): the colour (0 none, 1..) and kind
    (0 none, 1..) of the shape under it, which of 3 x 3 cells of the picture it lies in, the
    shape's number in the batch (``first_shape`` + index; -1 for background) and its region."""
    _, gh, gw = grid
    rows, cols = gh // merge, gw // merge
    which = torch.from_numpy(token_labels(scene, rows, cols).astype("int64")).flatten()  # [M]
    colour = torch.tensor([0] + [1 + list(COLOURS).index(s.colour) for s in scene.shapes])
    kind = torch.tensor([0] + [1 + SHAPES.index(s.kind) for s in scene.shapes])
    r = torch.arange(rows)[:, None] * 3 // rows
    c = torch.arange(cols)[None, :] * 3 // cols
    cell = (r * 3 + c).flatten()  # [M]
    region = torch.tensor([0] + [list(REGIONS).index(s.region) for s in scene.shapes])
    shape_id = torch.where(which > 0, which - 1 + first_shape, -1)
    return torch.stack((colour[which], kind[which], cell, shape_id, region[which]), dim=1)


class VisionProbe(torch.nn.Module):
    """Linear heads on the vision tower's outputs, one per level (merged tokens, deepstack levels)."""

    def __init__(self, hidden: int, levels: int) -> None:
        super().__init__()
        self.sizes = (len(COLOURS) + 1, len(SHAPES) + 1, 9, len(REGIONS))
        self.heads = torch.nn.ModuleList(torch.nn.Linear(hidden, sum(self.sizes)) for _ in range(levels))

    def forward(self, features: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """Per token: colour and cell. Per shape (its tokens' mean, as one token inside a big shape
        cannot tell a square from a circle): kind and region."""
        fg = labels[:, 3] >= 0
        shape_ids = labels[fg, 3]
        num_shapes = int(shape_ids.max()) + 1 if fg.any() else 0
        kinds = torch.zeros(num_shapes, dtype=torch.long).index_put_((shape_ids,), labels[fg, 1])
        regions = torch.zeros(num_shapes, dtype=torch.long).index_put_((shape_ids,), labels[fg, 4])
        counts = torch.zeros(num_shapes).index_add_(0, shape_ids, torch.ones(len(shape_ids)))
        present = counts > 0  # a tiny shape may fall between token centres
        losses = []
        for head, x in zip(self.heads, features, strict=True):
            colour, _, cell, _ = head(x).split(self.sizes, dim=-1)
            losses.append(F.cross_entropy(colour, labels[:, 0]) + F.cross_entropy(cell, labels[:, 2]))
            if num_shapes:
                pooled = x.new_zeros(num_shapes, x.shape[1]).index_add(0, shape_ids, x[fg])
                pooled = pooled[present] / counts[present, None]  # [shapes, H]
                _, kind, _, region = head(pooled).split(self.sizes, dim=-1)
                losses.append(
                    F.cross_entropy(kind, kinds[present]) + F.cross_entropy(region, regions[present])
                )
        return torch.stack(losses).sum() / len(self.heads)


def warmup_pictures(
    seeds: range, processor: ImageProcessorConfig
) -> tuple[torch.Tensor, list[tuple[int, int, int]], torch.Tensor]:
    """Fresh pictures for the tower-only phase: pixel values, grids and token labels."""
    pixels, grids, labels, shapes = [], [], [], 0
    for seed in seeds:
        scene = sample_scene(np.random.default_rng(seed))
        patches, grid = preprocess_image(render(scene, seed), processor)
        pixels.append(patches)
        grids.append(grid)
        labels.append(scene_token_labels(scene, grid, processor.merge_size, shapes))
        shapes += len(scene.shapes)
    return torch.cat(pixels), grids, torch.cat(labels)


def tower_loss(
    model: Qwen3VLMoeForConditionalGeneration,
    probe: VisionProbe,
    pixels: torch.Tensor,
    grids: list[tuple[int, int, int]],
    labels: torch.Tensor,
) -> torch.Tensor:
    assert model.visual is not None
    merged, levels = model.visual(pixels, grids)  # [M, H], [S, M, H]
    return probe([merged, *levels.unbind(0)], labels)
