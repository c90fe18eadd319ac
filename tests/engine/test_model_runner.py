"""The runner's decode fast path packs exactly what its general path packs."""

from __future__ import annotations

import pytest
import torch

from shared.engine import Engine, EngineConfig, Request, SamplingParams
from shared.engine.host import long_tensor
from shared.engine.model_runner import ModelRunner

pytestmark = pytest.mark.unit


def test_long_tensor_matches_torch_tensor():
    for values in ([], [7], [3, 0, 2**40, 5]):
        t = long_tensor(values, torch.device("cpu"))
        assert t.dtype == torch.long and torch.equal(t, torch.tensor(values, dtype=torch.long))


def test_decode_fast_path_gives_the_general_paths_logits(lm, monkeypatch):
    engine = Engine(lm, EngineConfig(block_size=4, num_blocks=64, enable_prefix_cache=False))
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
    assert torch.equal(fast, general)
