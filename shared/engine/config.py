"""Engine configuration: one frozen dataclass, built once by the service's entry point.

The KV pool is sized from the device's memory by default (``memory.py`` owns that decision):
``gpu_memory_utilization`` of the GPU, or ``cpu_kv_cache_fraction`` of the host's available memory.
``kv_cache_memory`` (bytes) overrides the budget and ``num_blocks`` overrides both (tests pin it to
make the pool deliberately small). Derived sizes are methods of this class so that no caller
recomputes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shared.flags import flag
from shared.models.config import TextConfig

MOE_KERNELS = ("auto", "loop", "grouped_mm", "cpu")
ATTENTION_BACKENDS = ("auto", "gather", "flex", "cpu")
# The most KV a CPU engine gets by default, as vLLM's CPU backend (VLLM_CPU_KVCACHE_SPACE): a CPU
# engine cannot run enough sequences to use more, and the zero-filled pool is resident memory.
CPU_KV_CACHE_CAP = 4 << 30


@dataclass(frozen=True)
class EngineConfig:
    """The engine's settings; every field is also a flag of the services that run an engine."""

    block_size: int = flag(16, help="tokens per KV block")
    kv_cache_memory: int | None = flag(
        None, help="bytes for the K and V pool of all layers (default: sized from the device's memory)"
    )
    num_blocks: int | None = flag(None, help="KV pool size in blocks; overrides --kv-cache-memory")
    gpu_memory_utilization: float = flag(
        0.9,
        help="fraction of the GPU's memory this engine may use (weights, activations, KV); the KV "
        "pool gets what a profiling forward at the largest step leaves",
    )
    cpu_kv_cache_fraction: float = flag(
        0.05,
        help="fraction of the host's available memory (MemAvailable) for the KV pool on CPU, at most "
        f"{CPU_KV_CACHE_CAP >> 30} GiB; small because a local cluster runs several engines on one "
        "machine and each pool is resident (zero-filled): ~1 GiB each on a 24 GiB machine",
    )
    max_num_seqs: int = flag(64, help="sequences in the running batch")
    max_num_batched_tokens: int = flag(
        2048, help="token budget of one engine step (decodes + prefill chunks)"
    )
    prefill_chunk_size: int = flag(512, help="most prompt tokens of one sequence per step")
    enable_prefix_cache: bool = flag(True, help="reuse the KV of identical prompt prefixes")
    max_model_len: int | None = flag(None, help="longest sequence (default: the model's)")
    seed: int = flag(0, help="sampling seed of requests that carry none")
    moe_kernel: str = flag(
        "auto",
        help="MoE expert kernel: loop, grouped_mm (torch's grouped GEMM), cpu (a C kernel built on "
        "first use, for decode-sized steps; grouped GEMM above) or auto (cpu on CPUs where it builds, "
        "else grouped_mm where available, else loop)",
    )
    attention_backend: str = flag(
        "auto",
        help="paged attention kernel: gather (blocks copied out, then SDPA), flex (FlexAttention "
        "reading blocks in place), cpu (decode rows by a C kernel built on first use, reading blocks "
        "in place; other rows gather) or auto (cpu on CPUs where it builds, else gather; flex on "
        "GPUs: docs/BENCHMARKS.md)",
    )
    compile_decode: bool = flag(
        False,
        help="run decode-only steps as one compiled graph (torch.compile; a CUDA graph per batch "
        "bucket on GPUs), compiled before serving; on by default in the decode worker and the "
        "colocated server",
    )

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.max_num_seqs < 1 or self.prefill_chunk_size < 1:
            raise ValueError("block_size, max_num_seqs and prefill_chunk_size must be positive")
        if self.max_num_batched_tokens < self.max_num_seqs:
            # Every running sequence decodes every step: the budget must hold one token for each.
            raise ValueError("max_num_batched_tokens must be >= max_num_seqs")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError("num_blocks must be positive")
        if self.kv_cache_memory is not None and self.kv_cache_memory < 1:
            raise ValueError("kv_cache_memory must be positive")
        if not (0 < self.gpu_memory_utilization <= 1 and 0 < self.cpu_kv_cache_fraction <= 1):
            raise ValueError("gpu_memory_utilization and cpu_kv_cache_fraction must be in (0, 1]")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend must be one of {ATTENTION_BACKENDS}")
        if self.moe_kernel not in MOE_KERNELS:
            raise ValueError(f"moe_kernel must be one of {MOE_KERNELS}")

    def attention_for(self, device: torch.device) -> str:
        """The paged attention kernel on this device: ``auto`` is cpu on CPU, flex elsewhere (the
        engine falls back to gather where that kernel cannot be built)."""
        if self.attention_backend == "auto":
            return "cpu" if device.type == "cpu" else "flex"
        return self.attention_backend

    def block_bytes(self, text: TextConfig, dtype: torch.dtype) -> int:
        """Bytes of one block: K and V of ``block_size`` tokens in every layer."""
        return self.block_size * text.kv_elements_per_token * torch.empty((), dtype=dtype).element_size()

    def resolve_max_model_len(self, text: TextConfig) -> int:
        return self.max_model_len or text.max_position_embeddings
