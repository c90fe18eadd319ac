"""``DirectCompiled``: calls at a shape Dynamo accepted once skip Dynamo and give what it gives.

A small module with parameters and a buffer it writes in place (as the decode step writes the KV
pool), compiled once with a dynamic batch (~10 s on 2 cores)."""

from __future__ import annotations

import pytest
import torch

from shared.engine.graph_entry import DirectCompiled
from tests.numerics import assert_close_scaled

pytestmark = pytest.mark.slow


class Step(torch.nn.Module):
    """``out = relu(x @ w1) @ w2 + table[ids]``; row ``i`` of ``x`` is also stored in ``pool[ids[i]]``."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(8, 16, generator=g), requires_grad=False)
        self.w2 = torch.nn.Parameter(torch.randn(16, 8, generator=g), requires_grad=False)
        self.pool = torch.zeros(64, 8)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        self.pool.index_copy_(0, ids, x)
        return torch.relu(x @ self.w1) @ self.w2 + self.pool[ids].sum(-1, keepdim=True) * x.shape[0]


class Holder:
    """The compiled function is a method of an object holding the module, as ``DecodeGraph._forward``."""

    def __init__(self, step: Step, direct: bool = True, returns_pair: bool = False) -> None:
        self.step, self.returns_pair = step, returns_pair
        self.call = DirectCompiled(self.forward, ("x", "ids"), {}, direct)

    def forward(self, x: torch.Tensor, ids: torch.Tensor):
        out = self.step(x, ids)
        return (out, out.sum()) if self.returns_pair else out


def batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    torch._dynamo.mark_dynamic(x, 0)
    ids = torch.randperm(64, generator=g)[:n]
    torch._dynamo.mark_dynamic(ids, 0)
    return x, ids


@torch.inference_mode()
def test_a_shape_seen_once_is_called_directly_with_the_same_results():
    """Bit for bit what the same compiled code gives through Dynamo; eager's result within rounding."""
    holder, through_dynamo, eager = Holder(Step()), Holder(Step(), direct=False), Step()
    for i, n in enumerate([4, 4, 4, 6, 6, 4]):
        x, ids = batch(n, seed=i)
        out = holder.call(x, ids)
        assert torch.equal(out, through_dynamo.call(x, ids)), f"call {i}, batch {n}"
        assert torch.equal(holder.step.pool, through_dynamo.step.pool), "the in-place store happened"
        assert_close_scaled(out, eager(x, ids), name=f"call {i} against eager")
    # batch 4 through Dynamo once, then twice direct; batch 6 once through Dynamo, once direct; 4 again direct
    assert holder.call.direct_calls == 4


@torch.inference_mode()
def test_without_direct_calls_every_call_goes_through_dynamo():
    holder = Holder(Step(), direct=False)
    for i in range(3):
        holder.call(*batch(4, seed=i))
    assert holder.call.direct_calls == 0


@torch.inference_mode()
def test_a_function_that_returns_more_than_one_output_stays_on_dynamo(caplog):
    holder, eager = Holder(Step(), returns_pair=True), Step()
    for i in range(3):
        x, ids = batch(4, seed=i)
        out, total = holder.call(x, ids)
        want = eager(x, ids)
        assert_close_scaled(out, want, name=f"call {i}")
        assert_close_scaled(total, want.sum(), name=f"call {i}, the sum")
    assert holder.call.direct_calls == 0
    assert "every call goes through Dynamo" in caplog.text
