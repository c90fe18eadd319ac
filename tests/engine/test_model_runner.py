"""The runner's decode fast path packs exactly what its general path packs (with the gather kernel:
the same logits bit for bit; with the C decode kernel: the same within fp32 round-off)."""

from __future__ import annotations

import pytest
import torch

from shared.engine import Engine, EngineConfig, Request, SamplingParams
from shared.engine.host import long_tensor
from shared.engine.model_runner import ModelRunner
from tests.numerics import assert_close_scaled

pytestmark = pytest.mark.unit


def test_long_tensor_matches_torch_tensor():
    for values in ([], [7], [3, 0, 2**40, 5]):
        t = long_tensor(values, torch.device("cpu"))
        assert t.dtype == torch.long and torch.equal(t, torch.tensor(values, dtype=torch.long))


@pytest.mark.parametrize("attention", ["gather", "cpu"])
def test_decode_fast_path_gives_the_general_paths_logits(lm, monkeypatch, attention):
    config = EngineConfig(block_size=4, num_blocks=64, enable_prefix_cache=False, attention_backend=attention)
    engine = Engine(lm, config)
    g = torch.Generator().manual_seed(0)
    for i, n in enumerate((3, 9, 17)):  # contexts ending mid-block and on a block boundary
        row = torch.randint(0, 500, (n,), generator=g).tolist()
        engine.add_request(Request(f"r{i}", row, SamplingParams(temperature=0, max_tokens=8)))
    engine.step()  # prefill: every sequence samples its first token
    batch = engine.scheduler.schedule().scheduled
    assert ModelRunner.decode_only(batch)
    _, fast = engine.runner.run(batch)
    monkeypatch.setattr(ModelRunner, "decode_only", staticmethod(lambda batch: False))
    _, general = engine.runner.run(batch)
    if attention == "gather":
        assert torch.equal(fast, general)
    else:  # the C kernel sums in another order than SDPA
        assert_close_scaled(fast, general, name="cpu decode kernel vs gather")
