"""A mixed run on a real local cluster gives back everything it took: the suite's variant of
``python -m bench.soak``, exact return instead of a growth fit.

``epd up`` on the bundled demo model, the encoder's cache capped small so that the run evicts. A
warm-up mixed run comes first: it opens what a cluster opens once and keeps (the router's sockets
to each worker, the workers' push sockets to the router's inbox, thread pools), so the open fds
counted after it are the baseline, with no tolerance. Then the mixed run (``bench/soak_load.py``):
0-3 images with repeats, streamed and not, clients that disconnect before any answer or after a
few chunks. After it, polled with a deadline (the workers' gauges change at their report time):
every KV pool has all its blocks free, every queue, the router's inflight count and its load count
per worker are 0, the caches are within their caps, and no process has more open fds than at the
baseline.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from bench.soak_load import Driver, Mix, first_model
from bench.soak_probe import cluster_procs, settle
from tests.cluster import EpdCluster, start_cluster

pytestmark = pytest.mark.cluster

CACHE_BYTES = 256 << 10  # ~10 of the demo model's 64x64 embeddings: the run evicts
SETTLE_S = 30.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EpdCluster]:
    env = {**os.environ, "ENCODER_CACHE_BYTES": str(CACHE_BYTES)}
    with start_cluster(None, tmp_path_factory.mktemp("soak"), env=env) as c:
        yield c


def test_a_mixed_run_gives_back_blocks_fds_and_slots(cluster: EpdCluster) -> None:
    procs = cluster_procs(cluster.log_dir, cluster.proc.pid if cluster.proc else None)
    driver = Driver(cluster.url, first_model(cluster.url), Mix(abort_share=0.3), seed=0)
    warm = asyncio.run(driver.closed(24, 4))
    assert not warm.errors, warm.error_kinds()
    before = settle(procs, SETTLE_S)
    assert not before.problems, before.problems

    run = asyncio.run(driver.closed(72, 6))
    assert not run.errors, run.error_kinds()
    kinds = run.counts()
    assert kinds.get("stream") and kinds.get("json"), kinds
    cut = [o.abort_after for o in run.outcomes if o.aborted]
    assert 0 in cut and any(cut), f"disconnects after {cut} chunks: both kinds wanted"

    after = settle(procs, SETTLE_S, fds_before=before.sample)
    print(f"\nrequests {kinds}; at rest {after.waited_s:.2f} s after the run")
    assert not after.problems, after.problems
    enc, pre = after.sample["encoder-0"], after.sample["prefill-0"]
    assert enc.get("encoder_cache_lookups_total{result=hit}", 0) > 0  # repeats hit the cache
    assert enc["encoder_cache_evictions_total"] > 0 and enc["encoder_cache_max_bytes"] == CACHE_BYTES
    assert pre["prefill_prompt_tokens_cached_total"] > 0  # and the prefix cache
    assert 0 < pre["prefill_prefix_cached_blocks"] <= pre["prefill_total_blocks"]
