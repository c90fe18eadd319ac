"""The grouped-GEMM expert kernel computes what the reference loop computes; installing is per model."""

from __future__ import annotations

import pytest
import torch

from shared.engine.moe_kernels import ExpertsOp, grouped_mm_experts, install_kernel, select_kernel
from shared.models.layers.moe import SparseMoeBlock, grouped_experts
from tests.numerics import assert_close_scaled

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(not hasattr(torch, "_grouped_mm"), reason="torch without _grouped_mm"),
]


@pytest.mark.parametrize("tokens", [1, 5, 64])
def test_grouped_mm_equals_the_loop(tokens):
    g = torch.Generator().manual_seed(tokens)
    e, h, i, k = 8, 24, 20, 2
    x = torch.randn(tokens, h, generator=g)
    gate_up, down = torch.randn(e, h, 2 * i, generator=g), torch.randn(e, i, h, generator=g)
    ids = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(tokens)])
    weights = torch.rand(tokens, k, generator=g)
    # Another GEMM kernel over other row groupings: fp32 round-off, scaled to the outputs.
    assert_close_scaled(
        grouped_mm_experts(x, gate_up, down, ids, weights),
        grouped_experts(x, gate_up, down, ids, weights),
        name="grouped_mm vs loop",
    )


def test_install_sets_the_kernel_of_one_model_only(lm):
    cpu = torch.device("cpu")
    sizes = (lm.config.text.hidden_size, lm.config.text.moe_intermediate_size)
    for name, want in (("auto", "cpu"), ("loop", "loop"), ("grouped_mm", "grouped_mm"), ("cpu", "cpu")):
        kernel = select_kernel(name, cpu, torch.float32, sizes)
        assert isinstance(kernel, ExpertsOp) and kernel.name == want
    blocks = [m for m in lm.modules() if isinstance(m, SparseMoeBlock)]
    try:
        assert install_kernel(lm, grouped_mm_experts) == len(blocks) > 0
        assert all(b.kernel is grouped_mm_experts for b in blocks)
        assert SparseMoeBlock.kernel is grouped_experts
    finally:
        install_kernel(lm, grouped_experts)


def test_the_op_compiles_as_one_node_without_graph_breaks():
    """The custom op has a fake kernel: a full-graph compile of a MoE call traces through it."""
    g = torch.Generator().manual_seed(0)
    x, gate_up, down = (
        torch.randn(6, 24, generator=g),
        torch.randn(8, 24, 40, generator=g),
        torch.randn(8, 20, 24, generator=g),
    )
    ids = torch.stack([torch.randperm(8, generator=g)[:2] for _ in range(6)])
    weights = torch.rand(6, 2, generator=g)
    for name in ("loop", "grouped_mm", "cpu"):
        op = ExpertsOp(name)
        compiled = torch.compile(op.__call__, fullgraph=True, backend="eager")
        assert torch.equal(compiled(x, gate_up, down, ids, weights), op(x, gate_up, down, ids, weights))


def test_engine_with_the_grouped_kernel_gives_the_same_tokens(lm):
    from shared.engine import Engine, EngineConfig, Request, SamplingParams

    req = lambda: [Request("a", list(range(3, 90)), SamplingParams(temperature=0, max_tokens=6))]  # noqa: E731
    loop = Engine(lm, EngineConfig(num_blocks=16, moe_kernel="loop")).generate(req())
    grouped = Engine(lm, EngineConfig(num_blocks=16, moe_kernel="grouped_mm")).generate(req())
    install_kernel(lm, grouped_experts)
    assert loop == grouped
