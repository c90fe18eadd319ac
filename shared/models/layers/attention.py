"""The attention interface the language model calls, and its reference implementation.

The model never touches the KV cache itself. Each decoder layer hands its rotated q, k, v for the
packed batch to an ``AttentionBackend``; the backend stores k, v wherever its cache lives and
returns the attention output. The engine swaps in a paged backend (or a GPU kernel) without the
model noticing.

Shape legend: T packed new tokens of the whole batch, Hq query heads, Hkv key/value heads,
D head dim, L cached + new length of one sequence.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F


class AttentionBackend(ABC):
    """Causal self-attention over a packed batch of sequences for one forward pass.

    A backend instance describes one batch: which sequences the packed tokens belong to and where
    each sequence's earlier K/V live. The caller's obligations: ``forward`` is called once per
    decoder layer, in layer order, with tokens packed sequence after sequence in the order the
    backend was built with; the new K/V are part of the cache once ``forward`` returns.
    """

    @abstractmethod
    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [T, Hq, D], k/v [T, Hkv, D] -> output [T, Hq, D]."""


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """One sequence: q [Tq, Hq, D] are the last Tq of the L positions in k/v [L, Hkv, D]."""
    tq, hq, _ = q.shape
    length, hkv, _ = k.shape
    qh, kh, vh = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # [H, len, D]
    if hq != hkv:
        kh = kh.repeat_interleave(hq // hkv, dim=0)
        vh = vh.repeat_interleave(hq // hkv, dim=0)
    if tq == 1:
        out = F.scaled_dot_product_attention(qh, kh, vh, scale=scale)
    elif tq == length:
        out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=scale)
    else:
        offset = length - tq
        rows = torch.arange(tq, device=q.device)[:, None] + offset
        mask = torch.arange(length, device=q.device)[None, :] <= rows  # [Tq, L]
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale)
    return out.transpose(0, 1)  # [Tq, Hq, D]


class SequenceKV:
    """One sequence's K/V for every layer as contiguous tensors ``[L, Hkv, D]``.

    The reference cache: simple and exact, it grows by concatenation. It is also the shape in
    which one sequence's KV is exported from a paged pool and shipped between services.
    """

    def __init__(self, num_layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers

    def __len__(self) -> int:
        return 0 if self.keys[-1] is None else self.keys[-1].shape[0]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        old_k, old_v = self.keys[layer], self.values[layer]
        keys = k if old_k is None else torch.cat((old_k, k), dim=0)
        values = v if old_v is None else torch.cat((old_v, v), dim=0)
        self.keys[layer], self.values[layer] = keys, values
        return keys, values


class ContiguousAttention(AttentionBackend):
    """Reference backend over ``SequenceKV`` caches, one per sequence in the batch."""

    def __init__(self, caches: list[SequenceKV], query_lens: list[int], scale: float) -> None:
        if len(caches) != len(query_lens):
            raise ValueError("one cache per sequence is required")
        self.caches = caches
        self.query_lens = query_lens
        self.scale = scale

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        outs = []
        for cache, qi, ki, vi in zip(
            self.caches,
            q.split(self.query_lens),
            k.split(self.query_lens),
            v.split(self.query_lens),
            strict=True,
        ):
            full_k, full_v = cache.append(layer, ki, vi)
            outs.append(causal_attention(qi, full_k, full_v, self.scale))
        return torch.cat(outs, dim=0)
