"""A whole local cluster started by ``epd up`` on a tiny checkpoint, once per package: two
encoders, one prefill, two decode workers and the router, all on free loopback ports.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.cluster import EpdCluster, start_cluster
from tests.engine.conftest import SPEC


@pytest.fixture(scope="package")
def ckpt(tiny_checkpoint) -> Path:
    return tiny_checkpoint(**SPEC)


@pytest.fixture(scope="package")
def cluster(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EpdCluster]:
    with start_cluster(
        ckpt, tmp_path_factory.mktemp("epd"),
        "--encoders", "2", "--prefills", "1", "--decodes", "2", "--dtype", "float32",
        "--decode-arg=--report-interval-s=0.2", "--router-arg=--max-model-len=4096",
        "--router-arg=--max-images=4",
        # Two cores run ~8 processes here: a busy decode worker can be silent for seconds.
        "--router-arg=--heartbeat-timeout-s=15",
    ) as c:  # fmt: skip
        yield c


@pytest.fixture(scope="package")
def hf(ckpt: Path):
    """transformers' model on the package's checkpoint, the reference for greedy answers."""
    from transformers import Qwen3VLMoeForConditionalGeneration

    return Qwen3VLMoeForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
