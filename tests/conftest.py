"""Project-wide fixtures: tiny checkpoints in the published layout, built once per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from shared.checkpoint.tiny import cached_tiny_checkpoint

# Several services share two cores in the tests; every process sizes its own thread pool.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``tiny_checkpoint(**spec_fields)``: the checkpoint folder, built once per session and spec."""
    root = tmp_path_factory.mktemp("tiny-checkpoints")
    return lambda **fields: cached_tiny_checkpoint(root, **fields)
