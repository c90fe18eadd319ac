"""Per-peer in-flight limits: counting requests (held in parts) per ROUTER identity, releasing them,
and sweeping out what the caller no longer holds; then the encoder enforcing it on a live socket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.http import Health
from services.encoder.config import EncoderConfig
from services.encoder.metrics import EncoderMetrics
from services.encoder.server import EncoderServer
from shared.checkpoint.tiny import cached_tiny_checkpoint
from shared.multimodal.image import image_hash
from shared.vision.runner import VisionRunner
from shared.wire import DealerSocket, EncodeRequest, ErrorKind, ImageInput, PullSocket, StageError
from shared.wire.inflight import SWEEP_AT_LEAST, PeerLimit
from shared.wire.messages import ImageEmbeddingResult
from tests.encoder.conftest import TINY_PIXELS, png

pytestmark = pytest.mark.unit

A, B = b"peer-a", b"peer-b"


def test_a_peer_is_full_at_its_limit_and_others_are_not() -> None:
    limit = PeerLimit(2)
    limit.hold(A, "r1")
    assert not limit.full(A)
    limit.hold(A, "r2")
    assert limit.full(A) and not limit.full(B)
    assert not limit.full(A, "r1")  # a request already held (images sent again) is no new one
    limit.release("r1")
    assert not limit.full(A) and limit.count(A) == 1
    limit.release("r2")
    limit.release("r2")  # releasing what is not held does nothing
    assert len(limit) == 0 and limit.count(A) == 0


def test_a_request_counts_until_its_last_part_is_released() -> None:
    limit = PeerLimit(1)
    limit.hold(A, "r", 0)
    limit.hold(A, "r", 1)
    assert limit.count(A) == 1 and limit.full(A)
    limit.release("r", 0)
    assert limit.full(A)
    limit.release("r", 1)
    assert not limit.full(A)


def test_a_request_id_reused_by_another_peer_moves_to_it() -> None:
    limit = PeerLimit(4)
    limit.hold(A, "r")
    limit.hold(B, "r")
    assert (limit.count(A), limit.count(B)) == (0, 1)


def test_what_the_caller_no_longer_holds_is_swept_before_a_refusal() -> None:
    held = {"r1", "r2"}
    limit = PeerLimit(2, held=held.__contains__)
    limit.hold(A, "r1")
    limit.hold(A, "r2")
    held.discard("r1")  # ended by a path that forgot to release it
    assert not limit.full(A)
    assert limit.count(A) == 1


def test_the_table_is_swept_as_it_grows() -> None:
    held: set[str] = set()
    limit = PeerLimit(10**6, held=held.__contains__)
    for i in range(3 * SWEEP_AT_LEAST):
        limit.hold(A, f"r{i}")  # none released, none held by the caller any more
    assert len(limit) < SWEEP_AT_LEAST


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        PeerLimit(0)


# ----- the encoder, in process -------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached_tiny_checkpoint(tmp_path_factory.getbasetemp() / "checkpoints", **TINY_PIXELS)


@pytest.fixture
def server(checkpoint: Path) -> Iterator[EncoderServer]:
    cfg = EncoderConfig(model=checkpoint, port=0, http_port=0, max_inflight_per_peer=2, cache_bytes=0)
    s = EncoderServer(cfg, VisionRunner(checkpoint, "cpu", "float32"), EncoderMetrics(), Health())
    yield s
    s.close()


def request(rid: str, seed: int, reply_to: str) -> EncodeRequest:
    data = png(64, 64, seed)
    return EncodeRequest(rid, [ImageInput(0, image_hash(data), data)], reply_to, 1e10)


def test_the_encoder_answers_overloaded_past_a_peers_limit(server: EncoderServer) -> None:
    with (
        PullSocket("tcp://127.0.0.1:0", bind=True, accept=[ImageEmbeddingResult, StageError]) as inbox,
        DealerSocket(server.endpoint, bind=False, accept=[StageError]) as a,
        DealerSocket(server.endpoint, bind=False, accept=[StageError]) as b,
    ):
        for i in range(3):
            a.send(request(f"a{i}", i, inbox.endpoint))
        b.send(request("b0", 9, inbox.endpoint))
        for _ in range(20):  # receive only: all four wait for a forward
            server.receive(0.05)
        reply = a.recv(5)
        assert isinstance(reply, StageError) and reply.kind is ErrorKind.OVERLOADED
        assert reply.request_id == "a2"
        assert b.recv(0.3) is None  # another router is not limited by the first one
        assert server.metrics.registry.get_sample_value("encoder_peer_limit_refusals_total") == 1
        while not server.idle():
            server.step()  # preparation, forwards: the images are delivered and their requests leave
        got = {inbox.recv(5).request_id for _ in range(3)}  # type: ignore[union-attr]
        assert got == {"a0", "a1", "b0"}
        a.send(request("a3", 3, inbox.endpoint))
        server.receive(1.0)
        assert a.recv(0.3) is None and len(server.batcher) + len(server.preparing) == 1  # room again
