"""Engine flags shared by prefill and decode, and building the engine from them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shared.engine import Engine, EngineConfig
from shared.models.loader import load_model

ENGINE_HELP = {
    "block_size": "tokens per KV block",
    "num_blocks": "KV pool size in blocks (0: from kv_cache_memory)",
    "kv_cache_memory": "bytes for the KV pool when num_blocks is 0",
    "max_num_seqs": "sequences in the running batch",
    "max_num_batched_tokens": "token budget of one engine step",
    "prefill_chunk_size": "most prompt tokens of one sequence per step",
    "enable_prefix_cache": "reuse the KV of identical prompt prefixes",
    "max_model_len": "longest sequence (0: the model's)",
}


@dataclass(frozen=True)
class EngineFlags:
    """Mixed into the services' configs: the engine half of their flags."""

    block_size: int = 16
    num_blocks: int = 0
    kv_cache_memory: int = 1 << 30
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    prefill_chunk_size: int = 512
    enable_prefix_cache: bool = True
    max_model_len: int = 0

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            block_size=self.block_size,
            kv_cache_memory=self.kv_cache_memory,
            num_blocks=self.num_blocks or None,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            prefill_chunk_size=self.prefill_chunk_size,
            enable_prefix_cache=self.enable_prefix_cache,
            max_model_len=self.max_model_len or None,
        )


def check_device(device: str, dtype: str) -> None:
    if dtype not in ("auto", "bfloat16", "float32"):
        raise ValueError(f"dtype must be auto, bfloat16 or float32, got {dtype!r}")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device must be cpu or cuda[:N], got {device!r}")


def build_engine(model_dir: Path, device: str, dtype: str, flags: EngineFlags) -> Engine:
    """Load the language model and ``lm_head`` only (no vision weights) and wrap it in an engine."""
    model = load_model(model_dir, parts={"language"}, dtype=dtype, device=device)
    return Engine(model, flags.engine_config())
