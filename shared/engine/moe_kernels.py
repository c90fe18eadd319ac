"""Expert kernels the engine can install in the model's MoE blocks (``SparseMoeBlock.kernel``).

``loop`` is the model's reference ``grouped_experts`` (one GEMM pair per active expert).
``grouped_mm`` runs all experts in one grouped GEMM call per projection (``torch._grouped_mm``):
on a GPU that is the grouped-GEMM kernel the design calls for; on the CPU torch runs the same
per-expert GEMMs from C++, which saves the Python loop (a few percent at small batch sizes).
``cpu`` runs the C kernel of ``cpu_kernels`` (each active expert's weights streamed once, no
packing) for steps of up to ``MAX_EXPERT_TOKENS`` tokens, decode steps, and ``grouped_mm`` (or
``loop``) above. ``auto`` takes ``cpu`` on a CPU where that kernel builds, else ``grouped_mm``
wherever a probe call works for the device and dtype, else ``loop``. All compute the same function.

The engine calls either through one opaque op (``opaque.py``), ``epd::routed_experts``, with a fake
(meta) kernel: a compiled decode step sees one opaque node per MoE layer (``torch._grouped_mm`` has no
float32 fake kernel, and the loop's per-expert shapes would break the graph), and ``grouped_mm``
counts tokens per expert on the device (``scatter_add_``), so a GPU step has no host sync to
capture in a CUDA graph. The reference ``loop`` reads the counts on the host; it is for the CPU.

Shape legend: T tokens, K experts per token, P = T*K routed pairs, H hidden, E experts,
I expert intermediate size.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import nn

from shared.engine import cpu_kernels
from shared.engine.opaque import opaque_op
from shared.models.layers.moe import ExpertsKernel, SparseMoeBlock, grouped_experts

log = logging.getLogger(__name__)


def grouped_mm_experts(
    x: torch.Tensor,  # [T, H]
    gate_up: torch.Tensor,  # [E, H, 2I]
    down: torch.Tensor,  # [E, I, H]
    topk_ids: torch.Tensor,  # [T, K]
    topk_weights: torch.Tensor,  # [T, K]
) -> torch.Tensor:
    k = topk_ids.shape[1]
    flat = topk_ids.flatten()  # [P]
    order = torch.argsort(flat, stable=True)  # pairs grouped by expert
    token_idx = order // k  # [P]
    counts = torch.zeros(gate_up.shape[0], dtype=torch.int32, device=x.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))  # [E], no host sync
    ends = torch.cumsum(counts, 0, dtype=torch.int32)  # [E]
    gate, up = torch._grouped_mm(x[token_idx], gate_up, offs=ends).chunk(2, dim=-1)  # [P, I] each
    routed = torch._grouped_mm(F.silu(gate) * up, down, offs=ends)  # [P, H]
    routed = routed * topk_weights.flatten()[order].to(x.dtype)[:, None]
    return torch.zeros_like(x).index_add_(0, token_idx, routed)


@functools.cache
def _grouped_mm_works(device: torch.device, dtype: torch.dtype) -> bool:
    if not hasattr(torch, "_grouped_mm"):
        return False
    try:
        x = torch.randn(4, 32, device=device, dtype=dtype)
        gate_up = torch.randn(2, 32, 32, device=device, dtype=dtype)
        down = torch.randn(2, 16, 32, device=device, dtype=dtype)
        ids = torch.tensor([[0, 1]] * 4, device=device)
        weights = torch.full((4, 2), 0.5, device=device)
        grouped_mm_experts(x, gate_up, down, ids, weights)
    except (RuntimeError, NotImplementedError):
        return False
    return True


def cpu_experts(
    x: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
) -> torch.Tensor:
    if x.shape[0] <= cpu_kernels.MAX_EXPERT_TOKENS:
        return cpu_kernels.routed_experts(x, gate_up, down, topk_ids, topk_weights)
    many = grouped_mm_experts if _grouped_mm_works(x.device, x.dtype) else grouped_experts
    return many(x, gate_up, down, topk_ids, topk_weights)


KERNELS: dict[str, ExpertsKernel] = {
    "loop": grouped_experts,
    "grouped_mm": grouped_mm_experts,
    "cpu": cpu_experts,
}


def _routed_experts_fake(
    x: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    kernel: str,
) -> torch.Tensor:
    return torch.empty_like(x)


@opaque_op(
    "routed_experts(Tensor x, Tensor gate_up, Tensor down, Tensor topk_ids, Tensor topk_weights, str kernel)"
    " -> Tensor",
    _routed_experts_fake,
)
def routed_experts(
    x: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    kernel: str,
) -> torch.Tensor:
    return KERNELS[kernel](x, gate_up, down, topk_ids, topk_weights)


class ExpertsOp:
    """An ``ExpertsKernel`` that runs a named kernel through the custom op (one graph node)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(
        self,
        x: torch.Tensor,
        gate_up: torch.Tensor,
        down: torch.Tensor,
        topk_ids: torch.Tensor,
        topk_weights: torch.Tensor,
    ) -> torch.Tensor:
        return routed_experts(x, gate_up, down, topk_ids, topk_weights, self.name)


def select_kernel(
    name: str, device: torch.device, dtype: torch.dtype, sizes: tuple[int, int]
) -> ExpertsKernel:
    """The kernel called ``name`` (or the one ``auto`` picks) for experts of ``sizes``
    (hidden, expert intermediate) on this device and dtype; ValueError if it cannot run there."""
    if name == "auto":
        name = "cpu" if device.type == "cpu" and _cpu_kernel_for_auto(device, dtype, sizes) else "grouped_mm"
        if name == "grouped_mm" and not _grouped_mm_works(device, dtype):
            name = "loop"
    elif name == "cpu" and (reason := _cpu_kernel_missing(device, dtype, sizes)):
        raise ValueError(f"--moe-kernel cpu: {reason}")
    elif name == "grouped_mm" and not _grouped_mm_works(device, dtype):
        raise ValueError(f"torch._grouped_mm is not usable for {dtype} on {device}")
    elif name not in KERNELS:
        raise ValueError(f"unknown MoE kernel {name!r}")
    return ExpertsOp(name)


def _cpu_kernel_missing(device: torch.device, dtype: torch.dtype, sizes: tuple[int, int]) -> str | None:
    if device.type != "cpu" or dtype not in cpu_kernels.DTYPES:
        return f"the cpu kernel runs {tuple(cpu_kernels.DTYPES)} on CPUs, not {dtype} on {device.type}"
    return cpu_kernels.experts_kernel(*sizes)


def _cpu_kernel_for_auto(device: torch.device, dtype: torch.dtype, sizes: tuple[int, int]) -> bool:
    """Whether ``auto`` takes the C kernel on this CPU; when not, the log says why."""
    hidden, intermediate = sizes
    expert_bytes = 3 * hidden * intermediate * torch.empty((), dtype=dtype).element_size()
    reason: str | None
    if expert_bytes > cpu_kernels.AUTO_MAX_EXPERT_BYTES:
        reason = f"experts of {expert_bytes / 2**20:.1f} MiB stream faster through it"
    else:
        reason = cpu_kernels.auto_reason()
    if reason:
        log.info("MoE kernel: the grouped GEMM, not cpu: %s", reason)
        return False
    if reason := _cpu_kernel_missing(device, dtype, sizes):
        log.warning("MoE kernel: the grouped GEMM instead of cpu, %s", reason)
        return False
    return True


def install_kernel(model: nn.Module, kernel: ExpertsKernel) -> int:
    """Set the kernel of every MoE block of this model instance; returns how many blocks."""
    blocks = [m for m in model.modules() if isinstance(m, SparseMoeBlock)]
    for block in blocks:
        block.kernel = kernel  # an instance attribute: other models in the process keep theirs
    return len(blocks)
