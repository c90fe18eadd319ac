"""The serving loop driven step by step in-process: batching across requests, overload, invariance."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.clients.encoder import EncoderClient
from services.common.http import Health
from services.encoder.config import EncoderConfig
from services.encoder.metrics import EncoderMetrics
from services.encoder.server import EncoderServer
from shared.multimodal.image import image_hash
from shared.vision.runner import VisionRunner
from shared.wire import ErrorKind, ImageEmbeddingResult, PullSocket, StageError
from tests.encoder.conftest import collect, png
from tests.numerics import assert_close_scaled

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def runner(checkpoint: Path) -> VisionRunner:
    return VisionRunner(checkpoint, "cpu", "float32")


def make_server(runner: VisionRunner, checkpoint: Path, **changes) -> EncoderServer:
    cfg = EncoderConfig(model=checkpoint, port=0, http_port=0, **changes)
    return EncoderServer(cfg, runner, EncoderMetrics(), Health())


@pytest.fixture
def client_and_server(
    request, runner: VisionRunner, checkpoint: Path
) -> Iterator[tuple[EncoderClient, EncoderServer]]:
    server = make_server(runner, checkpoint, **getattr(request, "param", {}))
    client = EncoderClient(server.endpoint)
    try:
        yield client, server
    finally:
        client.close()
        server.close()


def sample(server: EncoderServer, name: str) -> float:
    return server.metrics.registry.get_sample_value(name) or 0.0


def submit_three(client: EncoderClient, inbox: PullSocket) -> None:
    client.submit("A", {0: png(64, 64, 1), 1: png(128, 64, 2)}, inbox.endpoint)
    client.submit("B", {0: png(96, 96, 3)}, inbox.endpoint)
    client.submit("C", {0: png(64, 160, 4)}, inbox.endpoint)
    time.sleep(0.3)  # all three are in the socket before the loop turns


def test_waiting_images_of_different_requests_share_one_forward(client_and_server, inbox, reference) -> None:
    client, server = client_and_server
    submit_three(client, inbox)
    server.step()
    got = collect(inbox, 4)
    assert sample(server, "encoder_vision_forwards_total") == 1
    assert sample(server, "encoder_batch_requests_sum") == 3
    # Batched, yet each image's own features: equal to encoding it alone up to fp32 round-off, which
    # depends on the batch's row count on some CPUs' GEMM kernels (see test_batch_invariance).
    images = {
        ("A", 0): png(64, 64, 1),
        ("A", 1): png(128, 64, 2),
        ("B", 0): png(96, 96, 3),
        ("C", 0): png(64, 160, 4),
    }
    for msg in got:
        assert isinstance(msg, ImageEmbeddingResult)
        ref = reference(images[(msg.request_id, msg.image_index)])
        key = f"{msg.request_id}/{msg.image_index}"
        assert_close_scaled(msg.embeds, ref.embeds, name=f"{key} embeds batched vs alone")
        assert_close_scaled(msg.deepstack, ref.deepstack, name=f"{key} deepstack batched vs alone")


@pytest.mark.parametrize("client_and_server", [{"cross_request_batching": False}], indirect=True)
def test_without_cross_request_batching_each_request_runs_alone(client_and_server, inbox) -> None:
    client, server = client_and_server
    submit_three(client, inbox)
    for _ in range(3):
        server.step()
    collect(inbox, 4)
    assert sample(server, "encoder_vision_forwards_total") == 3
    assert sample(server, "encoder_batch_requests_sum") == 3


@pytest.mark.parametrize("client_and_server", [{"patch_budget": 16}], indirect=True)
def test_patch_budget_splits_batches(client_and_server, inbox) -> None:
    client, server = client_and_server
    submit_three(client, inbox)  # 16 + 32 + 36 + 40 patches
    server.step()
    assert len(collect(inbox, 1)) == 1 and len(server.batcher) == 3
    for _ in range(3):
        server.step()
    collect(inbox, 3)
    assert sample(server, "encoder_vision_forwards_total") == 4


@pytest.mark.parametrize("client_and_server", [{"max_queued_patches": 40}], indirect=True)
def test_overload_is_refused_with_an_error(client_and_server, inbox) -> None:
    client, server = client_and_server
    submit_three(client, inbox)
    server.step()
    got = collect(inbox, 4)
    errors = [m for m in got if isinstance(m, StageError)]
    assert [(e.request_id, e.image_index) for e in errors] == [("A", 1), ("B", 0), ("C", 0)]
    assert all(e.kind is ErrorKind.OVERLOADED for e in errors)


def test_an_image_being_prepared_holds_neither_the_loop_nor_a_second_request_for_it(
    checkpoint: Path, inbox, monkeypatch
) -> None:
    """A picture whose decode is slow (held on a gate here) is prepared off the loop: a later
    image is encoded and delivered meanwhile, and a second request for the slow picture joins the
    one being prepared (one decode, two results)."""
    runner = VisionRunner(checkpoint, "cpu", "float32")
    slow, fast = png(160, 64, 7), png(64, 64, 8)
    gate, decoded = threading.Event(), []
    prepare = runner.prepare

    def gated(data: bytes, max_image_pixels: int):
        if data == slow:
            assert gate.wait(30)
        decoded.append(data)
        return prepare(data, max_image_pixels)

    monkeypatch.setattr(runner, "prepare", gated)
    server = make_server(runner, checkpoint, prepare_threads=2)
    client = EncoderClient(server.endpoint)
    try:
        client.submit("slow", {0: slow}, inbox.endpoint)
        client.submit("fast", {0: fast}, inbox.endpoint)
        time.sleep(0.3)
        server.step()  # both to the threads; the loop waits for them at most PREPARE_WAIT_S
        client.submit("again", {0: slow}, inbox.endpoint)
        time.sleep(0.3)
        server.step()
        (first,) = collect(inbox, 1)
        assert isinstance(first, ImageEmbeddingResult) and first.request_id == "fast"
        waiting = server.preparing.find(runner.cache_key(image_hash(slow)))  # still on its gate
        assert waiting is not None and len(server.preparing) == 1
        assert [w.request_id for w in waiting.waiters] == ["slow", "again"]
        gate.set()
        for _ in range(3):
            server.step()
        rest = collect(inbox, 2)
        assert sorted(m.request_id for m in rest) == ["again", "slow"]
        assert all(isinstance(m, ImageEmbeddingResult) for m in rest)
        assert decoded.count(slow) == 1 and sample(server, "encoder_vision_forwards_total") == 2
    finally:
        gate.set()
        client.close()
        server.close()


@pytest.mark.parametrize("client_and_server", [{"prepare_threads": 0}], indirect=True)
def test_images_prepared_in_the_loop_share_one_forward_too(client_and_server, inbox) -> None:
    client, server = client_and_server
    submit_three(client, inbox)
    server.step()
    assert len(collect(inbox, 4)) == 4 and sample(server, "encoder_vision_forwards_total") == 1
