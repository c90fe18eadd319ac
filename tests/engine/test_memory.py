"""Sizing the KV pool: overrides in order, a fraction of the host's memory on CPU, the GPU arithmetic."""

from __future__ import annotations

import logging

import pytest
import torch

from shared.engine import Engine, EngineConfig
from shared.engine.config import CPU_KV_CACHE_CAP
from shared.engine.memory import (
    GiB,
    KVSource,
    gpu_kv_budget,
    mem_available,
    plan_kv_blocks,
    profile_forward,
    stable_budget,
)
from shared.models.config import TextConfig

pytestmark = pytest.mark.unit

# Qwen3-VL-30B-A3B's attention: 48 layers x K and V x 4 heads x 128 = 49,152 elements per token,
# 96 KiB in bfloat16, so a block of 16 tokens is 1.5 MiB.
TEXT = TextConfig(
    vocab_size=151_936, hidden_size=2048, num_hidden_layers=48, num_attention_heads=32,
    num_key_value_heads=4, head_dim=128, intermediate_size=6144, rms_norm_eps=1e-6,
    rope_theta=5e6, mrope_section=(24, 20, 20), max_position_embeddings=262_144,
)  # fmt: skip
BLOCK = 3 << 19  # 1.5 MiB
CPU = torch.device("cpu")


def cpu_plan(config: EngineConfig, available: int):
    return plan_kv_blocks(config, TEXT, torch.bfloat16, CPU, None, available=lambda: available)


def test_block_bytes_of_the_reference_model():
    assert EngineConfig().block_bytes(TEXT, torch.bfloat16) == BLOCK


def test_mem_available_reads_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24576000 kB\nMemFree:  1000 kB\nMemAvailable:   16777216 kB\n")
    assert mem_available(meminfo) == 16 * GiB
    meminfo.write_text("MemTotal:       24576000 kB\n")
    with pytest.raises(RuntimeError, match="--kv-cache-memory"):
        mem_available(meminfo)


def test_cpu_plan_takes_a_fraction_of_available_memory():
    plan = cpu_plan(EngineConfig(cpu_kv_cache_fraction=0.05), 16 * GiB)
    assert plan.source is KVSource.CPU_AVAILABLE
    # 819.2 MiB, rounded down to 768 MiB (BUDGET_GRAIN) = 512 blocks of 1.5 MiB
    assert plan.num_blocks == 768 * (1 << 20) // BLOCK == 512
    assert plan.bytes == 512 * BLOCK and plan.block_size == 16
    assert plan.describe().startswith("KV pool: 512 blocks of 16 tokens = 0.75 GiB (cpu available memory")


def test_a_budget_from_memory_is_the_same_from_start_to_start():
    """The compiled decode graph takes the block count as a constant: the memory two decode workers
    starting together read (20.96 and 21.36 GiB, measured) must give both the same count."""
    counts = {cpu_plan(EngineConfig(cpu_kv_cache_fraction=0.05), int(gib * GiB)).num_blocks
              for gib in (20.96, 21.0, 21.36, 21.77)}  # fmt: skip
    assert counts == {682}  # budgets of 1,073 .. 1,115 MiB, rounded down to 1,024 MiB, / 1.5 MiB


def test_stable_budget_grains():
    mib = 1 << 20
    assert stable_budget(60 * GiB + 100 * mib, coarse=False) == 60 * GiB + 64 * mib  # GPU: 64 MiB
    assert stable_budget(62 * GiB + 100 * mib, coarse=True) == 60 * GiB  # CPU: 1/8 of 32 GiB
    assert stable_budget(1093 * mib, coarse=True) == 1024 * mib  # 1/8 of 1 GiB
    assert stable_budget(300 * mib, coarse=True) == 256 * mib  # 64 MiB at least
    assert stable_budget(40 * mib, coarse=True) == stable_budget(40 * mib, coarse=False) == 40 * mib


def test_cpu_plan_is_capped():
    plan = cpu_plan(EngineConfig(cpu_kv_cache_fraction=0.5), 1024 * GiB)
    assert plan.num_blocks == CPU_KV_CACHE_CAP // BLOCK


def test_overrides_win_in_order():
    def unread() -> int:
        raise AssertionError("the host's memory is not read when a flag sizes the pool")

    both = EngineConfig(num_blocks=7, kv_cache_memory=10 * BLOCK)
    plan = plan_kv_blocks(both, TEXT, torch.bfloat16, CPU, None, available=unread)
    assert (plan.num_blocks, plan.source) == (7, KVSource.NUM_BLOCKS)
    memory = EngineConfig(kv_cache_memory=10 * BLOCK + 1)
    plan = plan_kv_blocks(memory, TEXT, torch.bfloat16, CPU, None, available=unread)
    assert (plan.num_blocks, plan.source) == (10, KVSource.KV_CACHE_MEMORY)


def test_a_budget_smaller_than_one_block_is_refused():
    with pytest.raises(ValueError, match="holds no block of 1,572,864 B of this model"):
        cpu_plan(EngineConfig(), 1 << 20)
    with pytest.raises(ValueError, match="holds no block"):
        cpu_plan(EngineConfig(kv_cache_memory=BLOCK - 1), 16 * GiB)


def test_gpu_budget_is_utilization_less_peak_and_non_torch_memory():
    # 80 GiB GPU: torch reserves 24 GiB and peaked at 20 GiB; 55 GiB free, so 1 GiB is outside torch.
    budget = gpu_kv_budget(
        total=80 * GiB, free=55 * GiB, reserved=24 * GiB, peak_allocated=20 * GiB, utilization=0.9
    )
    assert budget == 72 * GiB - 20 * GiB - 1 * GiB
    # Another process holding 40 GiB of the same GPU counts against this engine's share.
    shared = gpu_kv_budget(
        total=80 * GiB, free=15 * GiB, reserved=24 * GiB, peak_allocated=20 * GiB, utilization=0.9
    )
    assert shared == 11 * GiB


def test_a_gpu_without_room_for_the_pool_is_refused():
    with pytest.raises(ValueError, match="no GPU memory is left for the KV pool.*--gpu-memory-utilization"):
        gpu_kv_budget(
            total=80 * GiB, free=30 * GiB, reserved=40 * GiB, peak_allocated=38 * GiB, utilization=0.5
        )


@pytest.mark.parametrize("field", ["gpu_memory_utilization", "cpu_kv_cache_fraction"])
@pytest.mark.parametrize("value", [0.0, 1.5])
def test_fractions_are_checked(field, value):
    with pytest.raises(ValueError, match="must be in"):
        EngineConfig(**{field: value})


def test_engine_logs_its_pool_size(lm, caplog):
    with caplog.at_level(logging.INFO, logger="shared.engine.memory"):
        engine = Engine(lm, EngineConfig(num_blocks=8, max_num_seqs=4))
    assert engine.kv_plan.num_blocks == engine.blocks.num_blocks == 8
    assert any(r.getMessage().startswith("KV pool: 8 blocks of 16 tokens") for r in caplog.records)


def test_profile_forward_runs_the_largest_step(lm):
    """What CUDA engines run before sizing the pool, here on CPU: it leaves no state behind."""
    profile_forward(lm, EngineConfig(max_num_batched_tokens=48, max_num_seqs=4))
