"""Building engine requests (and transformers inputs for the same prompt) in tests.

A prompt is written as pieces: an int is that many random text tokens, a ``Picture`` is one image
(its tokens wrapped in vision start/end tokens), a list of ints is those exact text tokens.
Pictures are random patches with a grid; identical ``Picture`` objects are the same image.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch

from shared.engine import ImageInput, Request, SamplingParams
from shared.models.config import ModelConfig
from shared.multimodal.mrope import mrope_positions

TEXT_VOCAB = 1000  # ids below the tiny tokenizer's special tokens


@dataclass(frozen=True, eq=False)
class Picture:
    grid: tuple[int, int, int]
    seed: int

    @property
    def pixels(self) -> torch.Tensor:  # [t*h*w, 1536]
        t, h, w = self.grid
        return torch.randn(t * h * w, 1536, generator=torch.Generator().manual_seed(self.seed))

    def num_tokens(self, merge: int) -> int:
        t, h, w = self.grid
        return t * h * w // merge**2


@dataclass
class Prompt:
    ids: list[int]
    pictures: list[Picture] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)  # first image token of each picture


def text(n: int, seed: int) -> list[int]:
    return torch.randint(0, TEXT_VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def build(pieces: list, cfg: ModelConfig, seed: int = 0) -> Prompt:
    merge = cfg.vision.spatial_merge_size
    p = Prompt([])
    for i, piece in enumerate(pieces):
        if isinstance(piece, int):
            p.ids += text(piece, seed * 1000 + i)
        elif isinstance(piece, list):
            p.ids += piece
        else:
            p.ids.append(cfg.vision_start_token_id)
            p.pictures.append(piece)
            p.starts.append(len(p.ids))
            p.ids += [cfg.image_token_id] * piece.num_tokens(merge)
            p.ids.append(cfg.vision_end_token_id)
    return p


def image_hash(pic: Picture) -> str:
    return hashlib.sha256(pic.pixels.numpy().tobytes()).hexdigest()


def request(
    rid: str, prompt: Prompt, cfg: ModelConfig, vision, params: SamplingParams | None = None, **kw
) -> Request:
    """An engine request with image features computed by our vision tower."""
    grids = [pic.grid for pic in prompt.pictures]
    positions, delta = mrope_positions(prompt.ids, grids, cfg.image_token_id, cfg.vision.spatial_merge_size)
    images = []
    if prompt.pictures:
        feats = vision.get_image_feature(torch.cat([pic.pixels for pic in prompt.pictures]), grids)
        for pic, start, f in zip(prompt.pictures, prompt.starts, feats, strict=True):
            images.append(ImageInput(f.embeds, f.deepstack, image_hash(pic), start))
    return Request(rid, prompt.ids, params or SamplingParams(temperature=0), positions, delta, images, **kw)


def hf_generate(hf, prompt: Prompt, cfg: ModelConfig, max_new_tokens: int) -> list[int]:
    pixels = [pic.pixels for pic in prompt.pictures]
    return hf_greedy(hf, prompt.ids, pixels, [pic.grid for pic in prompt.pictures], cfg, max_new_tokens)


def hf_greedy(
    hf,
    ids: list[int],
    pixels: list[torch.Tensor],
    grids: list,
    cfg: ModelConfig,
    max_new_tokens: int,
    **generate: Any,
) -> list[int]:
    """transformers' greedy ``generate`` for one prompt (token ids, per-image pixels and grids);
    ``generate``: more of its arguments (e.g. ``repetition_penalty``)."""
    input_ids = torch.tensor(ids)[None]
    kwargs = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "mm_token_type_ids": (input_ids == cfg.image_token_id).int(),
    }
    if pixels:
        kwargs["pixel_values"] = torch.cat(pixels)
        kwargs["image_grid_thw"] = torch.tensor(grids)
    with torch.inference_mode():
        out = hf.generate(**kwargs, max_new_tokens=max_new_tokens, do_sample=False, **generate)
    return out[0, input_ids.shape[1] :].tolist()
