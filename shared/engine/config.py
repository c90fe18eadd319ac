"""Engine configuration: one frozen dataclass, built once by the service's entry point.

The KV pool is sized by a memory budget (``kv_cache_memory`` bytes) unless ``num_blocks`` is given
(tests pin it to make the pool deliberately small). Derived sizes are methods of this class so that
no caller recomputes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shared.flags import flag
from shared.models.config import TextConfig

MOE_KERNELS = ("auto", "loop", "grouped_mm")


@dataclass(frozen=True)
class EngineConfig:
    """The engine's settings; every field is also a flag of the services that run an engine."""

    block_size: int = flag(16, help="tokens per KV block")
    kv_cache_memory: int = flag(
        1 << 30, help="bytes for the K and V pool of all layers (unless --num-blocks)"
    )
    num_blocks: int | None = flag(None, help="KV pool size in blocks; overrides --kv-cache-memory")
    max_num_seqs: int = flag(64, help="sequences in the running batch")
    max_num_batched_tokens: int = flag(
        2048, help="token budget of one engine step (decodes + prefill chunks)"
    )
    prefill_chunk_size: int = flag(512, help="most prompt tokens of one sequence per step")
    enable_prefix_cache: bool = flag(True, help="reuse the KV of identical prompt prefixes")
    max_model_len: int | None = flag(None, help="longest sequence (default: the model's)")
    seed: int = flag(0, help="sampling seed of requests that carry none")
    moe_kernel: str = flag(
        "auto", help="MoE expert kernel: auto (torch grouped GEMM where available), loop or grouped_mm"
    )

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.max_num_seqs < 1 or self.prefill_chunk_size < 1:
            raise ValueError("block_size, max_num_seqs and prefill_chunk_size must be positive")
        if self.max_num_batched_tokens < self.max_num_seqs:
            # Every running sequence decodes every step: the budget must hold one token for each.
            raise ValueError("max_num_batched_tokens must be >= max_num_seqs")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError("num_blocks must be positive")
        if self.moe_kernel not in MOE_KERNELS:
            raise ValueError(f"moe_kernel must be one of {MOE_KERNELS}")

    def block_bytes(self, text: TextConfig, dtype: torch.dtype) -> int:
        """Bytes of one block: K and V of ``block_size`` tokens in every layer."""
        return self.block_size * text.kv_elements_per_token * torch.empty((), dtype=dtype).element_size()

    def resolve_num_blocks(self, text: TextConfig, dtype: torch.dtype) -> int:
        if self.num_blocks is not None:
            return self.num_blocks
        n = self.kv_cache_memory // self.block_bytes(text, dtype)
        if n < 1:
            raise ValueError(f"kv_cache_memory {self.kv_cache_memory} B holds no block of this model")
        return n

    def resolve_max_model_len(self, text: TextConfig) -> int:
        return self.max_model_len or text.max_position_embeddings
