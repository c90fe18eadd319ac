"""Sparse mixture-of-experts block: softmax router, top-k, renormalised weights, SiLU experts.

Expert weights keep the published fused layout, ``gate_up_proj [E, H, 2I]`` (gate columns first)
and ``down_proj [E, I, H]``, so a token row multiplies them directly. The expert computation is
one function, ``ExpertsKernel``; the default groups the routed (token, expert) pairs by expert and
runs one matmul per active expert, with no loop over tokens. A GPU grouped-GEMM kernel plugs in
by assigning ``SparseMoeBlock.kernel``.

Shape legend: T tokens, H hidden, E experts, K experts per token, I expert intermediate size.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn


class ExpertsKernel(Protocol):
    def __call__(
        self,
        x: torch.Tensor,  # [T, H]
        gate_up: torch.Tensor,  # [E, H, 2I]
        down: torch.Tensor,  # [E, I, H]
        topk_ids: torch.Tensor,  # [T, K]
        topk_weights: torch.Tensor,  # [T, K]
    ) -> torch.Tensor: ...  # [T, H]


def grouped_experts(
    x: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
) -> torch.Tensor:
    """Reference CPU kernel: sort (token, expert) pairs by expert, one GEMM pair per active expert."""
    num_tokens, k = topk_ids.shape
    flat_ids = topk_ids.flatten()  # [T*K]
    order = torch.argsort(flat_ids, stable=True)  # pairs grouped by expert, tokens ascending
    token_idx = order // k  # [T*K]
    weights = topk_weights.flatten()[order].to(x.dtype)  # [T*K]
    counts = torch.bincount(flat_ids, minlength=gate_up.shape[0]).tolist()
    rows = x[token_idx]  # [T*K, H]
    outs = []
    start = 0
    for expert, count in enumerate(counts):
        if count == 0:
            continue
        chunk = rows[start : start + count]
        gate, up = (chunk @ gate_up[expert]).chunk(2, dim=-1)  # [n, I] each
        outs.append((F.silu(gate) * up) @ down[expert])  # [n, H]
        start += count
    routed = torch.cat(outs, dim=0) * weights[:, None]  # [T*K, H]
    out = torch.zeros_like(x)
    return out.index_add_(0, token_idx, routed)


class TopKRouter(nn.Module):
    def __init__(self, hidden: int, num_experts: int, top_k: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_experts, hidden))
        self.top_k = top_k

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = F.softmax(F.linear(x, self.weight), dim=-1, dtype=torch.float32)  # [T, E]
        weights, ids = torch.topk(probs, self.top_k, dim=-1)  # [T, K]
        weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights.to(x.dtype), ids


class Experts(nn.Module):
    def __init__(self, num_experts: int, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, hidden, 2 * intermediate))
        self.down_proj = nn.Parameter(torch.empty(num_experts, intermediate, hidden))


class SparseMoeBlock(nn.Module):
    kernel: ExpertsKernel = staticmethod(grouped_experts)

    def __init__(self, hidden: int, num_experts: int, top_k: int, intermediate: int) -> None:
        super().__init__()
        self.gate = TopKRouter(hidden, num_experts, top_k)
        self.experts = Experts(num_experts, hidden, intermediate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, ids = self.gate(x)
        return self.kernel(x, self.experts.gate_up_proj, self.experts.down_proj, ids, weights)
