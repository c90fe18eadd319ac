"""Typed sockets on loopback TCP: round trips, deadlines, malformed frames, the push pool."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import torch
import zmq

from shared.wire import (
    CacheMiss,
    DealerSocket,
    EncodeRequest,
    ErrorKind,
    ImageEmbeddingResult,
    ImageInput,
    PullSocket,
    PushPool,
    PushSocket,
    RouterSocket,
    Stage,
    StageError,
    WireError,
    WireTimeout,
)

pytestmark = pytest.mark.unit

H = "c" * 64


@pytest.fixture
def inbox() -> Iterator[PullSocket]:
    sock = PullSocket("tcp://127.0.0.1:0", bind=True, accept=[ImageEmbeddingResult, StageError])
    yield sock
    sock.close()


def embedding(n: int = 1024, h: int = 256) -> ImageEmbeddingResult:
    return ImageEmbeddingResult(
        "r", 0, H, (1, 64, 64), torch.randn(n, h).bfloat16(), torch.randn(3, n, h).bfloat16()
    )


def test_endpoint_reports_the_picked_port(inbox: PullSocket) -> None:
    assert inbox.endpoint.startswith("tcp://127.0.0.1:") and not inbox.endpoint.endswith(":*")


def test_push_pull_large_bf16(inbox: PullSocket) -> None:
    msg = embedding()
    with PushSocket(inbox.endpoint, bind=False) as push:
        sent = push.send(msg)
        got = inbox.recv(timeout=5)
    assert sent > msg.nbytes
    assert isinstance(got, ImageEmbeddingResult)
    assert torch.equal(got.embeds.view(torch.int16), msg.embeds.view(torch.int16))
    assert torch.equal(got.deepstack.view(torch.int16), msg.deepstack.view(torch.int16))


def test_receive_has_a_deadline(inbox: PullSocket) -> None:
    start = time.monotonic()
    assert inbox.recv(timeout=0.2) is None
    assert 0.15 < time.monotonic() - start < 2


def test_malformed_frames_raise_and_the_next_message_still_arrives(inbox: PullSocket) -> None:
    raw = zmq.Context.instance().socket(zmq.PUSH)
    raw.connect(inbox.endpoint)
    try:
        raw.send_multipart([b"\x00garbage", b"junk"])
        raw.send_multipart([b"\x85"])  # a truncated msgpack map
        with PushSocket(inbox.endpoint, bind=False) as push:
            push.send(StageError("r", 1, ErrorKind.BAD_IMAGE, "x", "t", Stage.ENCODER))
            outcomes = []
            for _ in range(3):  # two connections: fair-queued, so in no fixed order
                try:
                    outcomes.append(inbox.recv(timeout=5))
                except WireError as e:
                    outcomes.append(e)
        assert sum(isinstance(o, WireError) for o in outcomes) == 2
        assert [o.image_index for o in outcomes if isinstance(o, StageError)] == [1]
    finally:
        raw.close(linger=0)


def test_unexpected_type_is_rejected(inbox: PullSocket) -> None:
    with PushSocket(inbox.endpoint, bind=False) as push:
        push.send(CacheMiss("r", [0], [H]))
        with pytest.raises(WireError, match="not accepted here"):
            inbox.recv(timeout=5)


def test_router_dealer_round_trip_and_bad_message_peer() -> None:
    router = RouterSocket("tcp://127.0.0.1:0", bind=True, accept=[EncodeRequest])
    dealer = DealerSocket(router.endpoint, bind=False, accept=[CacheMiss, StageError])
    try:
        req = EncodeRequest("r9", [ImageInput(0, H)], "tcp://127.0.0.1:1", time.time() + 5)
        dealer.send(req)
        peer, got = router.recv(timeout=5)
        assert got.request_id == "r9"
        router.send(peer, CacheMiss("r9", [0], [H]))
        assert dealer.recv(timeout=5).image_indexes == [0]
        dealer.zmq_socket.send_multipart([b"not msgpack at all"])
        with pytest.raises(WireError) as info:
            router.recv(timeout=5)
        assert info.value.peer == peer  # so the service can answer the sender
    finally:
        dealer.close()
        router.close()


def test_router_answer_to_a_vanished_peer_fails_loudly() -> None:
    router = RouterSocket("tcp://127.0.0.1:0", bind=True)
    try:
        with pytest.raises(WireError, match="cannot answer"):
            router.send(
                b"\x00nobody",
                StageError(None, None, ErrorKind.INTERNAL, "x", "t", Stage.ENCODER),
                timeout=0.5,
            )
    finally:
        router.close()


def test_send_deadline_when_the_peer_never_reads() -> None:
    sink = PullSocket("tcp://127.0.0.1:0", bind=True, hwm=1)
    push = PushSocket(sink.endpoint, bind=False, hwm=1)
    try:
        with pytest.raises(WireTimeout):
            for _ in range(10_000):  # kernel buffers absorb a few; the HWM then blocks the send
                push.send(embedding(256, 256), timeout=0.2)
    finally:
        push.close()
        sink.close()


def test_push_pool_reuses_and_bounds_connections(inbox: PullSocket) -> None:
    pool = PushPool(max_sockets=2)
    try:
        first = pool.get(inbox.endpoint)
        assert pool.get(inbox.endpoint) is first
        pool.get("tcp://127.0.0.1:1")
        pool.get("tcp://127.0.0.1:2")  # evicts the least recently used (inbox)
        assert pool.get(inbox.endpoint) is not first
        pool.send(inbox.endpoint, StageError("r", 0, ErrorKind.INTERNAL, "x", "t", Stage.ENCODER))
        assert isinstance(inbox.recv(timeout=5), StageError)
        with pytest.raises(WireError, match="cannot connect"):
            pool.get("tcp://*:5")
    finally:
        pool.close()
