"""Multimodal rotary (MRoPE) position ids of a Qwen3-VL prompt and of the tokens after it.

Owns the three position axes (temporal, height, width) every language-model token gets. Text
tokens advance all three axes together; the tokens of an image with merged grid (1, h, w) sit on
a grid starting at the current position p: temporal p, height p + row, width p + column; the next
text token then starts at p + max(h, w). The prompt therefore "uses" fewer positions than it has
tokens; ``delta = max position + 1 - prompt length`` carries that difference to decoding, where
the token at cache index i gets position i + delta on all three axes. The results equal
transformers' ``Qwen3VLMoeModel.get_rope_index`` (images only) for one sequence.

A prompt is described by an ``MRopeLayout``: a short list of text and image segments, from which
the positions of any chunk [start, end) are built without materialising the whole prompt (chunked
prefill), and which is cheap to ship between services.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

GridTHW = tuple[int, int, int]


@dataclass(frozen=True)
class Segment:
    """A run of prompt tokens: text (grid None) or one image with its merged grid (t, h, w)."""

    start: int  # index of the first token in the prompt
    length: int  # number of tokens
    position: int  # position of the first token (text) or the grid origin (image)
    grid: GridTHW | None = None  # merged (t, h, w): image tokens are laid out t-major, then h, then w


@dataclass(frozen=True)
class MRopeLayout:
    """Position layout of one prompt: segments in token order, prompt length and decode delta."""

    segments: tuple[Segment, ...]
    length: int
    delta: int

    def positions(self, start: int = 0, end: int | None = None) -> torch.Tensor:
        """Positions [3, end - start] (int64) of prompt tokens [start, end)."""
        end = self.length if end is None else end
        if not 0 <= start <= end <= self.length:
            raise ValueError(f"chunk [{start}, {end}) is outside the prompt of {self.length} tokens")
        parts = []
        for seg in self.segments:
            lo, hi = max(start, seg.start), min(end, seg.start + seg.length)
            if lo >= hi:
                continue
            local = torch.arange(lo - seg.start, hi - seg.start, dtype=torch.long)  # [n]
            if seg.grid is None:
                parts.append((local + seg.position).expand(3, -1))
            else:
                _, gh, gw = seg.grid
                per_frame = gh * gw
                rows = torch.stack([local // per_frame, (local % per_frame) // gw, local % gw])  # [3, n]
                parts.append(rows + seg.position)
        if not parts:
            return torch.zeros(3, 0, dtype=torch.long)
        return torch.cat(parts, dim=1)


def mrope_layout(
    input_ids: Sequence[int] | torch.Tensor,
    image_grid_thws: Sequence[Sequence[int]] | torch.Tensor,
    image_token_id: int,
    spatial_merge_size: int,
) -> MRopeLayout:
    """Segment a prompt: each image takes the next t*h*w/merge^2 image tokens, in order.

    Raises ValueError when the image tokens and the grids disagree (count or run length).
    """
    ids = input_ids.tolist() if isinstance(input_ids, torch.Tensor) else list(input_ids)
    raw_grids = image_grid_thws.tolist() if isinstance(image_grid_thws, torch.Tensor) else image_grid_thws
    grids = [tuple(int(v) for v in g) for g in raw_grids]
    m = spatial_merge_size
    segments: list[Segment] = []
    pos = 0  # where the next segment starts
    top = -1  # largest position handed out so far
    n_images = 0
    text_start = 0
    while True:
        try:
            i = ids.index(image_token_id, text_start)
        except ValueError:
            break
        if i > text_start:
            segments.append(Segment(text_start, i - text_start, pos))
            pos += i - text_start
            top = max(top, pos - 1)
        if n_images >= len(grids):
            raise ValueError(f"the prompt has more images than the {len(grids)} image grids given")
        t, h, w = grids[n_images]
        if h % m or w % m:
            raise ValueError(f"image grid {(t, h, w)} is not divisible by spatial_merge_size {m}")
        merged = (t, h // m, w // m)
        count = merged[0] * merged[1] * merged[2]
        run = ids[i : i + count]
        if len(run) < count or any(tok != image_token_id for tok in run):
            raise ValueError(f"image {n_images} with grid {(t, h, w)} needs {count} consecutive image tokens")
        segments.append(Segment(i, count, pos, merged))
        top = max(top, pos + max(merged) - 1)
        pos += max(merged[1], merged[2])
        n_images += 1
        text_start = i + count
    if text_start < len(ids):
        segments.append(Segment(text_start, len(ids) - text_start, pos))
        pos += len(ids) - text_start
        top = max(top, pos - 1)
    if n_images != len(grids):
        raise ValueError(f"the prompt has {n_images} images but {len(grids)} image grids were given")
    return MRopeLayout(tuple(segments), len(ids), top + 1 - len(ids))


def mrope_positions(
    input_ids: Sequence[int] | torch.Tensor,
    image_grid_thws: Sequence[Sequence[int]] | torch.Tensor,
    image_token_id: int,
    spatial_merge_size: int,
) -> tuple[torch.Tensor, int]:
    """Positions [3, T] (int64) of a whole prompt and the delta that decoding adds."""
    layout = mrope_layout(input_ids, image_grid_thws, image_token_id, spatial_merge_size)
    return layout.positions(), layout.delta


def decode_positions(start: int, n: int, delta: int) -> torch.Tensor:
    """Positions [3, n] of tokens at cache indices start .. start + n - 1 after the prompt."""
    return (torch.arange(start, start + n, dtype=torch.long) + delta).expand(3, -1).contiguous()
