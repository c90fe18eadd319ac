"""Multimodal rotary (MRoPE) position ids of a Qwen3-VL prompt and of the tokens after it.

Owns the three position axes (temporal, height, width) every language-model token gets. Text
tokens advance all three axes together; the tokens of an image with merged grid (1, h, w) sit on
a grid starting at the current position p: temporal p, height p + row, width p + column; the next
text token then starts at p + max(h, w). The prompt therefore "uses" fewer positions than it has
tokens; ``delta = max position + 1 - prompt length`` carries that difference to decoding, where
the token at cache index i gets position i + delta on all three axes. The results equal
transformers' ``Qwen3VLMoeModel.get_rope_index`` for one sequence.

A video of grid (T, h, w) enters the prompt as T temporal groups, each behind its own timestamp text
and between its own <|vision_start|> and <|vision_end|>; each group is laid out like a one-frame
image (1, h, w). Time is told by the timestamp text, not by the temporal axis.

A prompt is described by an ``MRopeLayout``: a short list of text and vision segments, from which
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
    """A run of prompt tokens: text (grid None), or one image or one video temporal group with its
    merged grid (t, h, w)."""

    start: int  # index of the first token in the prompt
    length: int  # number of tokens
    position: int  # position of the first token (text) or the grid origin (vision)
    grid: GridTHW | None = None  # merged (t, h, w): vision tokens are laid out t-major, then h, then w


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


def _grids(raw: Sequence[Sequence[int]] | torch.Tensor, what: str) -> list[GridTHW]:
    rows = raw.tolist() if isinstance(raw, torch.Tensor) else raw
    if any(len(g) != 3 for g in rows):
        raise ValueError(f"{what} must be (t, h, w) triples, got {list(rows)}")
    return [(int(g[0]), int(g[1]), int(g[2])) for g in rows]


@dataclass
class _Runs:
    """The runs of one vision token in a prompt: the grids they take in order, and the scan state."""

    kind: str  # what one run is, for errors: "image" or "video group"
    source: str  # where the grids come from, for errors
    grids: list[GridTHW]
    labels: list[str]  # one per grid, for errors
    used: int = 0  # runs seen so far
    upcoming: int = 0  # index of the next run's first token, or the prompt length when none is left

    def find_next(self, ids: list[int], token: int, start: int) -> None:
        try:
            self.upcoming = ids.index(token, start)
        except ValueError:
            self.upcoming = len(ids)


def mrope_layout(
    input_ids: Sequence[int] | torch.Tensor,
    image_grid_thws: Sequence[Sequence[int]] | torch.Tensor,
    image_token_id: int,
    spatial_merge_size: int,
    *,
    video_grid_thws: Sequence[Sequence[int]] | torch.Tensor = (),
    video_token_id: int | None = None,
) -> MRopeLayout:
    """Segment a prompt into text runs and vision runs, in token order.

    Each run of image tokens takes the next image grid (t*h*w/merge^2 tokens). A video of grid
    (T, h, w) is T temporal groups, each its own run of h*w/merge^2 video tokens in the prompt
    (between its timestamp's <|vision_start|> and <|vision_end|>) with grid (1, h, w); runs of video
    tokens take the groups of all videos in order, as get_rope_index splits ``video_grid_thw``.
    Without ``video_token_id`` video tokens are text (image-only callers).

    Raises ValueError when the vision tokens and the grids disagree (count or run length).
    """
    ids = input_ids.tolist() if isinstance(input_ids, torch.Tensor) else list(input_ids)
    images = _grids(image_grid_thws, "image grids")
    videos = _grids(video_grid_thws, "video grids")
    if videos and video_token_id is None:
        raise ValueError("video grids were given without a video_token_id")
    runs = {image_token_id: _Runs("image", "image grids", images, [f"image {n}" for n in range(len(images))])}
    if video_token_id is not None:
        groups: list[GridTHW] = []
        labels: list[str] = []
        for v, (t, h, w) in enumerate(videos):
            groups += [(1, h, w)] * t
            labels += [f"video {v} group {g}" for g in range(t)]
        runs[video_token_id] = _Runs("video group", "temporal groups in the video grids", groups, labels)
    for token, r in runs.items():
        r.find_next(ids, token, 0)
    m = spatial_merge_size
    segments: list[Segment] = []
    pos = 0  # where the next segment starts
    top = -1  # largest position handed out so far
    text_start = 0
    while (i := min(r.upcoming for r in runs.values())) < len(ids):
        token = ids[i]
        r = runs[token]
        if i > text_start:
            segments.append(Segment(text_start, i - text_start, pos))
            pos += i - text_start
            top = max(top, pos - 1)
        if r.used >= len(r.grids):
            raise ValueError(f"the prompt has more {r.kind}s than the {len(r.grids)} {r.source}")
        t, h, w = r.grids[r.used]
        if h % m or w % m:
            raise ValueError(
                f"{r.labels[r.used]}: grid {(t, h, w)} is not divisible by spatial_merge_size {m}"
            )
        merged = (t, h // m, w // m)
        count = merged[0] * merged[1] * merged[2]
        if ids[i : i + count] != [token] * count:
            raise ValueError(f"{r.labels[r.used]} with grid {(t, h, w)} needs {count} consecutive tokens")
        segments.append(Segment(i, count, pos, merged))
        top = max(top, pos + max(merged) - 1)
        pos += max(merged[1], merged[2])
        r.used += 1
        text_start = i + count
        # Tokens [i, i + count) are all ``token``, so the other kinds' next runs are still ahead.
        r.find_next(ids, token, text_start)
    if text_start < len(ids):
        segments.append(Segment(text_start, len(ids) - text_start, pos))
        pos += len(ids) - text_start
        top = max(top, pos - 1)
    for r in runs.values():
        if r.used != len(r.grids):
            raise ValueError(f"the prompt has {r.used} {r.kind}s but {len(r.grids)} {r.source} were given")
    return MRopeLayout(tuple(segments), len(ids), top + 1 - len(ids))


def mrope_positions(
    input_ids: Sequence[int] | torch.Tensor,
    image_grid_thws: Sequence[Sequence[int]] | torch.Tensor,
    image_token_id: int,
    spatial_merge_size: int,
    *,
    video_grid_thws: Sequence[Sequence[int]] | torch.Tensor = (),
    video_token_id: int | None = None,
) -> tuple[torch.Tensor, int]:
    """Positions [3, T] (int64) of a whole prompt and the delta that decoding adds."""
    layout = mrope_layout(
        input_ids,
        image_grid_thws,
        image_token_id,
        spatial_merge_size,
        video_grid_thws=video_grid_thws,
        video_token_id=video_token_id,
    )
    return layout.positions(), layout.delta


def decode_positions(start: int, n: int, delta: int) -> torch.Tensor:
    """Positions [3, n] of tokens at cache indices start .. start + n - 1 after the prompt."""
    return (torch.arange(start, start + n, dtype=torch.long) + delta).expand(3, -1).contiguous()
