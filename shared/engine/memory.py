"""How many KV blocks the engine's pool gets: the one place that turns memory into a block count.

Order of precedence: ``--num-blocks`` (tests pin it), then ``--kv-cache-memory`` (explicit bytes),
then the device's own budget. On CUDA the budget is what ``--gpu-memory-utilization`` of the GPU
leaves after the weights, the activations of a profiling forward at the engine's largest step and
the memory outside torch's allocator (CUDA context, other processes), as in vLLM. On CPU it is
``--cpu-kv-cache-fraction`` of the machine's available memory, capped at ``CPU_KV_CACHE_CAP``.
A budget read from memory is rounded down, so that the block count is the same from start to start
and between workers that start together: the compiled decode graph takes it as a constant, and a
new count misses Inductor's cache (a cold compile, ~20-30 s on a small CPU). On CUDA to
``BUDGET_GRAIN``; on the CPU, whose available memory moves by hundreds of MiB while a cluster starts
(two decode workers read 20.96 and 21.36 GiB a moment apart), to an eighth of the budget's power of
two (128 MiB at 1 GiB: at most 12.5% of it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import torch

from shared.engine.config import CPU_KV_CACHE_CAP, EngineConfig
from shared.models.config import TextConfig
from shared.models.layers.attention import ContiguousAttention, SequenceKV
from shared.models.qwen3_vl_moe import Qwen3VLMoeForConditionalGeneration

log = logging.getLogger(__name__)

GiB = 1 << 30
MEMINFO = Path("/proc/meminfo")
BUDGET_GRAIN = 64 << 20  # memory-derived budgets are rounded down to at least this (a stable block count)


class KVSource(Enum):
    NUM_BLOCKS = "num_blocks flag"
    KV_CACHE_MEMORY = "kv_cache_memory flag"
    GPU_PROFILE = "gpu free memory after profiling"
    CPU_AVAILABLE = "cpu available memory"


@dataclass(frozen=True)
class KVPlan:
    num_blocks: int
    block_size: int
    bytes: int
    source: KVSource
    detail: str = ""  # the numbers behind the decision, for the start-up log

    def describe(self) -> str:
        why = f"{self.source.value}{f' {self.detail}' if self.detail else ''}"
        return (
            f"KV pool: {self.num_blocks:,} blocks of {self.block_size} tokens = "
            f"{self.bytes / GiB:.2f} GiB ({why})"
        )


def mem_available(meminfo: Path = MEMINFO) -> int:
    """The kernel's estimate of memory available to new allocations (``MemAvailable``), in bytes."""
    for line in meminfo.read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "MemAvailable":
            return int(value.split()[0]) * 1024  # reported in kB
    raise RuntimeError(f"no MemAvailable in {meminfo}: give --kv-cache-memory or --num-blocks")


def gpu_kv_budget(total: int, free: int, reserved: int, peak_allocated: int, utilization: float) -> int:
    """Bytes left for the KV pool: ``utilization`` of ``total`` less torch's peak and non-torch use.

    ``free`` and ``total`` as ``torch.cuda.mem_get_info`` reports them, ``reserved`` held by torch's
    caching allocator, ``peak_allocated`` torch's peak during the profiling forward (weights too)."""
    non_torch = total - free - reserved  # CUDA context, other processes on this GPU
    budget = int(total * utilization) - peak_allocated - non_torch
    if budget <= 0:
        raise ValueError(
            f"no GPU memory is left for the KV pool: {total / GiB:.2f} GiB x {utilization} - peak "
            f"{peak_allocated / GiB:.2f} GiB (weights and activations) - {non_torch / GiB:.2f} GiB outside "
            f"torch = {budget / GiB:.2f} GiB; raise --gpu-memory-utilization, lower "
            "--max-num-batched-tokens, or give --num-blocks"
        )
    return budget


def plan_kv_blocks(
    config: EngineConfig,
    text: TextConfig,
    dtype: torch.dtype,
    device: torch.device,
    profile: Callable[[], None] | None,
    available: Callable[[], int] = mem_available,
) -> KVPlan:
    """Size the pool (and log its size). ``profile`` runs the engine's largest step (used on CUDA
    only; None: the weights alone are measured); ``available`` reads the host's available memory
    in bytes (CPU only)."""
    block_bytes = config.block_bytes(text, dtype)

    def plan(num_blocks: int, source: KVSource, detail: str = "") -> KVPlan:
        return KVPlan(num_blocks, config.block_size, num_blocks * block_bytes, source, detail)

    if config.num_blocks is not None:
        return _logged(plan(config.num_blocks, KVSource.NUM_BLOCKS))
    if config.kv_cache_memory is not None:
        budget, source, detail = config.kv_cache_memory, KVSource.KV_CACHE_MEMORY, ""
    elif device.type == "cuda":
        budget, detail = _profiled_gpu_budget(config, device, profile)
        source = KVSource.GPU_PROFILE
    else:
        host = available()
        budget = min(int(host * config.cpu_kv_cache_fraction), CPU_KV_CACHE_CAP)
        source = KVSource.CPU_AVAILABLE
        detail = (
            f"{host / GiB:.2f} GiB x {config.cpu_kv_cache_fraction}, at most {CPU_KV_CACHE_CAP / GiB:.0f} GiB"
        )
    if source is not KVSource.KV_CACHE_MEMORY:
        budget = stable_budget(budget, coarse=source is KVSource.CPU_AVAILABLE)
    num_blocks = budget // block_bytes
    if num_blocks < 1:
        raise ValueError(
            f"the KV pool's budget ({source.value} {detail}: {budget:,} B) holds no block of "
            f"{block_bytes:,} B of this model; give --num-blocks or --kv-cache-memory"
        )
    return _logged(plan(num_blocks, source, detail))


def stable_budget(budget: int, coarse: bool) -> int:
    """``budget`` rounded down to ``BUDGET_GRAIN`` or, ``coarse``, to an eighth of its power of two
    if that is larger; a budget under one grain is left as it is."""
    grain = max(BUDGET_GRAIN, 1 << (budget.bit_length() - 4)) if coarse else BUDGET_GRAIN
    return budget - budget % grain if budget >= grain else budget


def _logged(plan: KVPlan) -> KVPlan:
    log.info("%s", plan.describe())
    return plan


def _profiled_gpu_budget(
    config: EngineConfig, device: torch.device, profile: Callable[[], None] | None
) -> tuple[int, str]:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)  # the peak restarts from what is allocated now
    if profile is not None:
        profile()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    free, total = torch.cuda.mem_get_info(device)
    reserved = torch.cuda.memory_reserved(device)
    util = config.gpu_memory_utilization
    budget = gpu_kv_budget(total, free, reserved, peak, util)
    detail = (
        f"{total / GiB:.2f} GiB x {util} - peak {peak / GiB:.2f} GiB - "
        f"{(total - free - reserved) / GiB:.2f} GiB outside torch"
    )
    torch.cuda.empty_cache()  # the profile's cached activations back to the device, for the pool
    return budget, detail


@torch.inference_mode()
def profile_forward(model: Qwen3VLMoeForConditionalGeneration, config: EngineConfig) -> None:
    """The engine's largest step on dummy input: ``max_num_batched_tokens`` tokens of one sequence
    through every layer (over a throwaway contiguous cache), and logits for ``max_num_seqs`` rows."""
    text = model.config.text
    device = next(model.parameters()).device
    tokens = config.max_num_batched_tokens
    ids = torch.zeros(tokens, dtype=torch.long, device=device)  # [T]
    positions = torch.arange(tokens, device=device).expand(3, tokens)  # [3, T]
    attn = ContiguousAttention([SequenceKV(text.num_hidden_layers)], [tokens], text.head_dim**-0.5)
    hidden = model(model.embed(ids), positions, attn)  # [T, H]
    model.compute_logits(hidden[-config.max_num_seqs :])
