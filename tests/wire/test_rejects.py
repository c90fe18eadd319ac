"""Malformed messages per socket type: a ROUTER knows the sender and answers it ``bad_request`` (the
request id echoed when it is a valid one); a PULL has nobody to answer; whatever the bytes, the
codec raises ``WireError`` and nothing else."""

from __future__ import annotations

import contextlib
import random

import msgpack
import pytest
import torch

from bench.fuzz_wire_messages import MUTATIONS, mutate
from shared.wire import (
    DealerSocket,
    EncodeRequest,
    ErrorKind,
    ImageEmbeddingResult,
    ImageInput,
    PullSocket,
    PushSocket,
    RouterSocket,
    Stage,
    StageError,
    WireError,
    decode,
    encode,
    rejects,
)

pytestmark = pytest.mark.unit

H = "a" * 64


def request(rid: str = "req-1") -> EncodeRequest:
    return EncodeRequest(rid, [ImageInput(0, H, b"png")], "tcp://127.0.0.1:9", 1.0)


def broken(msg: EncodeRequest) -> list[bytes]:
    """``msg`` with an image index out of range: its request id still readable."""
    frames = [bytes(f) for f in encode(msg)]
    header = msgpack.unpackb(frames[0])
    header["body"]["images"][0]["index"] = -5
    return [msgpack.packb(header), *frames[1:]]


def recv_error(sock: RouterSocket | PullSocket) -> WireError:
    for _ in range(50):
        try:
            sock.recv(0.1)
        except WireError as e:
            return e
    raise AssertionError("the malformed message never arrived")


def test_a_router_answers_the_sender_with_the_request_id() -> None:
    server = RouterSocket("tcp://127.0.0.1:0", bind=True, accept=[EncodeRequest])
    with server, DealerSocket(server.endpoint, bind=False, accept=[StageError]) as dealer:
        dealer.zmq_socket.send_multipart(broken(request("req-7")))
        e = recv_error(server)
        assert e.peer is not None and e.request_id == "req-7"
        server.send(e.peer, rejects.malformed(e, "encoder@test", Stage.ENCODER))
        reply = dealer.recv(5)
    assert isinstance(reply, StageError)
    assert (reply.kind, reply.request_id, reply.stage) == (ErrorKind.BAD_REQUEST, "req-7", Stage.ENCODER)
    assert (
        reply.message.startswith("malformed message: encode_request.images[0].index")
        and "index" in reply.message
    )


def test_an_invalid_request_id_is_not_echoed() -> None:
    header = msgpack.unpackb(bytes(encode(request())[0]))
    header["body"]["request_id"] = "bad id with spaces"
    with pytest.raises(WireError) as caught:
        decode([msgpack.packb(header)], [EncodeRequest])
    reply = rejects.malformed(caught.value, "x", Stage.PREFILL)
    assert reply.request_id is None and reply.kind is ErrorKind.BAD_REQUEST
    encode(reply)  # the reply itself always encodes


def test_a_pull_has_no_sender_to_answer() -> None:
    inbox = PullSocket("tcp://127.0.0.1:0", bind=True, accept=[ImageEmbeddingResult])
    with inbox, PushSocket(inbox.endpoint, bind=False) as push:
        push.zmq_socket.send_multipart([b"\x00garbage", b"frame"])
        e = recv_error(inbox)
    assert e.peer is None


def test_overloaded_names_the_limit() -> None:
    reply = rejects.overloaded("req-1", 8, "prefill@x", Stage.PREFILL)
    assert reply.kind is ErrorKind.OVERLOADED and reply.request_id == "req-1" and "8" in reply.message
    encode(reply)


@pytest.mark.parametrize("kind", MUTATIONS)
def test_the_codec_raises_only_wire_errors(kind: str) -> None:
    rng = random.Random(kind)
    msg = ImageEmbeddingResult("r", 0, H, (1, 2, 2), torch.randn(4, 8), torch.randn(2, 4, 8))
    for _ in range(200):
        frames = mutate([bytes(f) for f in encode(msg)], kind, rng)
        with contextlib.suppress(WireError):  # and nothing else
            decode(frames)
