"""A small local cluster (one encoder, one prefill, one decode worker, the router) on the tiny
checkpoint, started once for the load-generator tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import EpdCluster, start_cluster
from tests.engine.conftest import SPEC


@pytest.fixture(scope="package")
def ckpt(tiny_checkpoint) -> Path:
    return tiny_checkpoint(**SPEC)


@pytest.fixture(scope="package")
def cluster(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EpdCluster]:
    with start_cluster(
        ckpt, tmp_path_factory.mktemp("epd"), "--dtype", "float32",
        "--router-arg=--max-model-len=4096",
        # Two cores run four services and the load generator here: a worker can be silent for seconds.
        "--router-arg=--heartbeat-timeout-s=15",
    ) as c:  # fmt: skip
        yield c
