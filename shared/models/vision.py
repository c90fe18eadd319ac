"""The Qwen3-VL vision tower: ``get_image_feature``'s engine, and all the encoder service loads.

Input: the patches of one or more images, flattened by the image processor to
``[N, C*T*P*P]`` in spatial-merge-block order (each 2x2 block of neighbouring patches is
contiguous), plus each image's patch grid ``(t, h, w)``. Pipeline: 3D patch embedding (a linear
map of each patch), learned position embeddings bilinearly resampled from a square table to the
image's grid, 2D rotary attention blocks (each frame attends only to itself), then the 2x2 patch
merger to the language model's width. Deepstack: the outputs of the blocks named in
``deepstack_visual_indexes`` go through their own mergers and come back alongside.

Shape legend: N patches, M = N / 4 merged tokens, C vision hidden, O output width (text hidden),
S deepstack levels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shared.models.config import VisionConfig
from shared.models.layers.mlp import VisionMLP
from shared.models.layers.rotary import VisionRoPE, apply_rotary_vision


def _block_order(grid: torch.Tensor, merge: int) -> torch.Tensor:
    """[h, w, ...] laid out row-major -> [h*w, ...] in spatial-merge-block order."""
    h, w = grid.shape[:2]
    rest = grid.shape[2:]
    grid = grid.reshape(h // merge, merge, w // merge, merge, *rest).transpose(1, 2)
    return grid.reshape(h * w, *rest)


def _axis_taps(size: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear (align_corners) taps and weights of ``size`` target points on a ``side`` table."""
    src = torch.arange(size, dtype=torch.float32) * (side - 1) / max(size - 1, 1)
    lo = torch.floor(src)
    raw = lo.long()[:, None] + torch.arange(2)  # [size, 2]
    weights = (1 - (src[:, None] - raw.float()).abs()).clamp(min=0)
    return raw.clamp(0, side - 1), weights


def position_taps(
    grid_thw: list[tuple[int, int, int]], side: int, merge: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per patch: 4 indices into the flattened position table and their bilinear weights."""
    all_idx, all_w = [], []
    for t, h, w in grid_thw:
        h_idx, h_w = _axis_taps(h, side)
        w_idx, w_w = _axis_taps(w, side)
        idx = (h_idx[:, None, :, None] * side + w_idx[None, :, None, :]).reshape(h, w, 4)
        wgt = (h_w[:, None, :, None] * w_w[None, :, None, :]).reshape(h, w, 4)
        all_idx.append(_block_order(idx, merge).repeat(t, 1))
        all_w.append(_block_order(wgt, merge).repeat(t, 1))
    return torch.cat(all_idx), torch.cat(all_w)  # [N, 4] each


def rotary_positions(grid_thw: list[tuple[int, int, int]], merge: int) -> torch.Tensor:
    """(row, column) of every patch, in the same block order as the patches: [N, 2]."""
    out = []
    for t, h, w in grid_thw:
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        out.append(_block_order(torch.stack((rows, cols), dim=-1), merge).repeat(t, 1))
    return torch.cat(out)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        kernel = (cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(cfg.in_channels, cfg.hidden_size, kernel, stride=kernel, bias=True)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        # A conv whose kernel equals its stride over one patch is a matmul with the flattened kernel.
        weight = self.proj.weight.flatten(1)  # [C, C_in*T*P*P]
        return F.linear(patches.to(weight.dtype), weight, self.proj.bias)  # [N, C]


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=True)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=True)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, seg_lens: list[int]
    ) -> torch.Tensor:
        n = x.shape[0]
        q, k, v = self.qkv(x).view(n, 3, self.num_heads, -1).unbind(1)  # [N, heads, d] each
        q, k = apply_rotary_vision(q, k, cos, sin)
        # 4-D SDPA calls: 3-D ones take the unfused math path on the CPU (twice the time here).
        outs = [
            F.scaled_dot_product_attention(
                qs.transpose(0, 1)[None], ks.transpose(0, 1)[None], vs.transpose(0, 1)[None]
            )[0]
            for qs, ks, vs in zip(q.split(seg_lens), k.split(seg_lens), v.split(seg_lens), strict=True)
        ]  # each [heads, n_i, d]
        return self.proj(torch.cat(outs, dim=1).transpose(0, 1).reshape(n, -1))


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=1e-6)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=1e-6)
        self.attn = VisionAttention(cfg)
        self.mlp = VisionMLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, seg_lens: list[int]
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin, seg_lens)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """2x2 neighbouring patches -> one token of the language model's width.

    The final merger normalises each patch before concatenating the four; deepstack mergers
    normalise the concatenation (``postshuffle``).
    """

    def __init__(self, cfg: VisionConfig, postshuffle_norm: bool) -> None:
        super().__init__()
        self.merged = cfg.hidden_size * cfg.merge_unit
        self.postshuffle_norm = postshuffle_norm
        self.norm = nn.LayerNorm(self.merged if postshuffle_norm else cfg.hidden_size, eps=1e-6)
        self.linear_fc1 = nn.Linear(self.merged, self.merged)
        self.linear_fc2 = nn.Linear(self.merged, cfg.out_hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.postshuffle_norm:
            x = self.norm(x.view(-1, self.merged))
        else:
            x = self.norm(x).view(-1, self.merged)  # [M, 4C]
        return self.linear_fc2(F.gelu(self.linear_fc1(x)))  # [M, O]


class Qwen3VisionTransformer(nn.Module):
    """Checkpoint prefix ``model.visual``."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.config = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.pos_embed = nn.Embedding(cfg.num_position_embeddings, cfg.hidden_size)
        self.side = int(round(cfg.num_position_embeddings**0.5))
        self.rope = VisionRoPE(cfg.head_dim, cfg.rope_theta)
        self.blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.depth))
        self.merger = PatchMerger(cfg, postshuffle_norm=False)
        self.deepstack_merger_list = nn.ModuleList(
            PatchMerger(cfg, postshuffle_norm=True) for _ in cfg.deepstack_visual_indexes
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.pos_embed.weight.dtype

    def forward(
        self, pixel_values: torch.Tensor, grid_thw: list[tuple[int, int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """pixel_values [N, C_in*T*P*P] -> (merged [M, O], deepstack [S, M, O])."""
        cfg = self.config
        device = self.pos_embed.weight.device
        expected = sum(t * h * w for t, h, w in grid_thw)
        if pixel_values.shape != (expected, cfg.patch_dim):
            raise ValueError(
                f"pixel_values {tuple(pixel_values.shape)} do not match grids {grid_thw}: "
                f"expected ({expected}, {cfg.patch_dim})"
            )
        x = self.patch_embed(pixel_values.to(device))  # [N, C]
        idx, wgt = position_taps(grid_thw, self.side, cfg.spatial_merge_size)
        pos = (self.pos_embed(idx.to(device)) * wgt.to(device)[:, :, None]).sum(1)  # [N, C]
        x = x + pos.to(x.dtype)
        cos, sin = self.rope(rotary_positions(grid_thw, cfg.spatial_merge_size).to(device))
        seg_lens = [h * w for t, h, w in grid_thw for _ in range(t)]
        deepstack = []
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, seg_lens)
            if i in cfg.deepstack_visual_indexes:
                level = cfg.deepstack_visual_indexes.index(i)
                deepstack.append(self.deepstack_merger_list[level](x))
        merged = self.merger(x)
        if deepstack:
            return merged, torch.stack(deepstack)
        return merged, merged.new_zeros((0, *merged.shape))
