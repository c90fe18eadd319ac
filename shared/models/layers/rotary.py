"""Rotary position embeddings.

Text: interleaved multimodal RoPE (MRoPE). Each token has three position ids (temporal, height,
width); frequency slot ``j`` of the half head dim takes its angle from axis ``j % 3`` while
``j < 3 * section[axis]`` and from the temporal axis otherwise, so that all three axes are spread
over the whole frequency range. Text tokens carry the same id on all three axes, which reduces
MRoPE to ordinary 1D RoPE.

Vision: 2D axial RoPE over (row, column) of each patch; the first half of the rotated dims use
the row, the second half the column.
"""

from __future__ import annotations

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def inverse_frequencies(dim: int, theta: float) -> torch.Tensor:
    # Built on the CPU explicitly: models are constructed under the meta device before loading.
    steps = torch.arange(0, dim, 2, dtype=torch.float32, device="cpu")
    return 1.0 / (theta ** (steps / dim))  # [dim/2]


class MRoPE:
    """Cos/sin tables for interleaved MRoPE; positions are ``[3, T]`` (t, h, w)."""

    def __init__(self, head_dim: int, theta: float, section: tuple[int, int, int]) -> None:
        self.inv_freq = inverse_frequencies(head_dim, theta)  # [D/2]
        axis = torch.zeros(head_dim // 2, dtype=torch.long, device="cpu")
        for a in (1, 2):
            axis[a : 3 * section[a] : 3] = a
        self.axis = axis  # [D/2]: which of t/h/w drives each frequency slot

    def __call__(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        inv = self.inv_freq.to(positions.device)
        freqs = positions[..., None].float() * inv  # [3, T, D/2]
        idx = self.axis.to(positions.device).view(1, 1, -1).expand(1, freqs.shape[1], -1)
        freqs = freqs.gather(0, idx)[0]  # [T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [T, D]
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k: [T, heads, D]; cos, sin: [T, D]."""
    cos, sin = cos[:, None, :], sin[:, None, :]
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


class VisionRoPE:
    """Cos/sin tables for 2D axial RoPE; positions are ``[N, 2]`` (row, column)."""

    def __init__(self, head_dim: int, theta: float) -> None:
        self.inv_freq = inverse_frequencies(head_dim // 2, theta)  # [D/4]

    def __call__(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq.to(positions.device)  # [N, 2, D/4]
        freqs = freqs.flatten(1)  # [N, D/2]: rows then columns
        emb = torch.cat((freqs, freqs), dim=-1)  # [N, D]
        return emb.cos(), emb.sin()


def apply_rotary_vision(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation in float32 whatever the activations' dtype; q, k: [N, heads, D]."""
    dtype = q.dtype
    q32, k32 = q.float(), k.float()
    cos, sin = cos[:, None, :], sin[:, None, :]
    q_out = q32 * cos + rotate_half(q32) * sin
    k_out = k32 * cos + rotate_half(k32) * sin
    return q_out.to(dtype), k_out.to(dtype)
