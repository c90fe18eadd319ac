"""Fuzzing the wire on a live cluster (``bench.fuzz_wire``): a few hundred mutated messages of every
type, then the cluster must be unharmed (no crash, every malformed message answered or counted,
every oversized frame a counted drop, every KV block free, the same greedy answer); and a router
over prefill's per-peer in-flight limit is answered ``overloaded`` instead of queued."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench.fuzz_wire import CLUSTER_FLAGS, fuzz
from shared.models.config import load_config
from shared.wire import DealerSocket, ErrorKind, StageError
from shared.wire.messages import AbortRequest, ImagePlacement, MRopeSegment, PrefillRequest, Sampling
from tests.cluster import EpdCluster, start_cluster
from tests.engine.conftest import SPEC

pytestmark = pytest.mark.cluster

LIMIT = 8  # prefill's --max-inflight-per-peer here (the default, 4096, is never reached by a test)


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint: Callable[..., Path]) -> Path:
    return tiny_checkpoint(**SPEC)


@pytest.fixture(scope="module")
def cluster(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EpdCluster]:
    flags = (*CLUSTER_FLAGS, f"--prefill-arg=--max-inflight-per-peer={LIMIT}")
    with start_cluster(ckpt, tmp_path_factory.mktemp("fuzz"), *flags) as c:
        yield c


def test_a_few_hundred_fuzzed_messages_leave_the_cluster_unharmed(cluster: EpdCluster, ckpt: Path) -> None:
    report = fuzz(cluster.log_dir, cluster.url, ckpt, messages=300, seed=1)
    text = "\n".join(report.lines(seed=1))
    print(text)
    assert report.messages == 300
    assert report.ok, f"{text}\n{cluster.logs()}"


def waiting_request(rid: str, ckpt: Path, inbox: str, decode_kv: str) -> PrefillRequest:
    """A prompt with one image whose embeddings never come: it waits (in flight) until aborted."""
    cfg = load_config(ckpt)
    ids = [cfg.vision_start_token_id, *[cfg.image_token_id] * 4, cfg.vision_end_token_id]
    layout = [MRopeSegment(0, 1, 0, None), MRopeSegment(1, 4, 1, (1, 2, 2)), MRopeSegment(5, 1, 3, None)]
    sampling = Sampling(0.0, 1.0, 0, 0.0, None, 4, [], False, None)
    return PrefillRequest(
        rid,
        ids,
        layout,
        -2,
        [ImagePlacement(0, "0" * 64, 1, 4)],
        sampling,
        decode_kv,
        inbox,
        time.time() + 60,
    )


def test_a_router_over_its_inflight_limit_is_answered_overloaded(cluster: EpdCluster, ckpt: Path) -> None:
    prefill, decode = cluster.ready("prefill-0"), cluster.ready("decode-0")
    refused = cluster.metric("prefill-0", "prefill_peer_limit_refusals_total")
    rids = [f"limit-{i}" for i in range(LIMIT + 1)]
    with DealerSocket(prefill["zmq"], bind=False, accept=[StageError]) as router:
        for rid in rids:
            router.send(waiting_request(rid, ckpt, cluster.ready("router")["inbox"], decode["kv"]))
        reply = router.recv(10)
        assert isinstance(reply, StageError), reply
        assert (reply.kind, reply.request_id) == (ErrorKind.OVERLOADED, rids[-1])
        assert cluster.metric("prefill-0", "prefill_peer_limit_refusals_total") == refused + 1
        for rid in rids:
            router.send(AbortRequest(rid, "test over"))
        router.send(waiting_request("limit-again", ckpt, cluster.ready("router")["inbox"], decode["kv"]))
        assert router.recv(1.0) is None  # room again: admitted, not refused
        router.send(AbortRequest("limit-again", "test over"))
