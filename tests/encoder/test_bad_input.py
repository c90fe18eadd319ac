"""Bad images and malformed messages: each gets a clear error, and the encoder keeps serving."""

from __future__ import annotations

import io
import json
import struct
import time
import zlib

import msgpack
import pytest
from PIL import Image

from bench.clients.encoder import EncoderClient
from bench.clients.encoder_launch import EncoderProcess
from shared.multimodal.image import image_hash
from shared.wire import (
    EncodeRequest,
    ErrorKind,
    ImageEmbeddingResult,
    ImageInput,
    PullSocket,
    StageError,
    encode,
)
from tests.encoder.conftest import collect, png

pytestmark = pytest.mark.cluster


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int, pixels: bytes = b"\0" * 64) -> bytes:
    """A PNG whose header declares any size, with a valid CRC, and very little pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(pixels))
        + _chunk(b"IEND", b"")
    )


def saved(fmt: str, size: tuple[int, int] = (40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buf, fmt)
    return buf.getvalue()


def corrupt_idat(data: bytes) -> bytes:
    at = data.index(b"IDAT") + 12
    return data[:at] + bytes(b ^ 0x5A for b in data[at : at + 64]) + data[at + 64 :]


GOOD_PNG, GOOD_JPEG = png(128, 96, seed=3), png(128, 96, seed=4, fmt="JPEG")
BAD_IMAGES: dict[str, bytes] = {
    "empty": b"",
    "random bytes": bytes(range(256)) * 4,
    "text": b"<svg xmlns='http://www.w3.org/2000/svg'><rect width='10' height='10'/></svg>",
    "truncated png": GOOD_PNG[: len(GOOD_PNG) // 2],
    "truncated jpeg": GOOD_JPEG[: len(GOOD_JPEG) // 3],
    "corrupt png data": corrupt_idat(GOOD_PNG),
    "png magic only": GOOD_PNG[:8],
    "bmp (unsupported)": saved("BMP"),
    "tiff (unsupported)": saved("TIFF"),
    "zero width": png_header(0, 16),
    "zero height": png_header(16, 0),
    "decompression bomb": png_header(60000, 60000),
    "absurd aspect ratio": png_header(8000, 2),
    "side too long": png_header(20000, 20000),
    "gif with no frames": b"GIF89a" + struct.pack("<HH", 10, 10) + b"\x00\x00\x00;",
}


def test_bad_image_corpus_each_gets_an_error_then_good_still_works(
    encoder: EncoderProcess, inbox: PullSocket
) -> None:
    client = EncoderClient(encoder.zmq)
    try:
        for n, data in enumerate(BAD_IMAGES.values()):
            client.submit(f"bad-{n}", {n % 3: data}, inbox.endpoint)
        errors = collect(inbox, len(BAD_IMAGES))
        client.submit("good", {0: png(100, 100, seed=9)}, inbox.endpoint)
        (good,) = collect(inbox, 1)
    finally:
        client.close()
    by_id = {m.request_id: m for m in errors}
    for n, name in enumerate(BAD_IMAGES):
        err = by_id[f"bad-{n}"]
        assert isinstance(err, StageError), f"{name}: got {type(err).__name__}"
        assert err.kind is ErrorKind.BAD_IMAGE and err.image_index == n % 3, (name, err)
        print(f"  {name:22s} -> {err.message}")
    assert isinstance(good, ImageEmbeddingResult) and good.request_id == "good"
    assert encoder.proc.poll() is None


def test_hash_that_does_not_match_the_bytes(encoder: EncoderProcess, inbox: PullSocket) -> None:
    client = EncoderClient(encoder.zmq)
    data = png(64, 64, seed=21)
    request = EncodeRequest(
        "liar", [ImageInput(0, image_hash(b"other"), data)], inbox.endpoint, time.time() + 10
    )
    try:
        client.sock.send(request)
        (err,) = collect(inbox, 1)
    finally:
        client.close()
    assert isinstance(err, StageError) and err.kind is ErrorKind.BAD_REQUEST and "SHA-256" in err.message


def test_malformed_messages_are_answered_to_the_sender(encoder: EncoderProcess, inbox: PullSocket) -> None:
    client = EncoderClient(encoder.zmq)
    valid = [bytes(f) for f in encode(EncodeRequest("ok", [ImageInput(0, "a" * 64)], inbox.endpoint, 1e12))]
    header = msgpack.unpackb(valid[0])
    header["body"]["reply_to"] = "http://evil"
    cases = {
        "garbage": [b"\xc1\xc1\xc1"],
        "empty frame": [b""],
        "wrong field": [msgpack.packb(header)],
        "extra frame": [*valid, b"surprise"],
        "truncated": [msgpack.packb({**header, "frames": [{"dtype": "bytes", "shape": [9]}]})],
    }
    try:
        for frames in cases.values():
            client.sock.zmq_socket.send_multipart(frames)  # malformed on purpose
        replies = [client.recv(timeout=10) for _ in cases]
        client.submit("after", {0: png(64, 64, seed=31)}, inbox.endpoint)
        (after,) = collect(inbox, 1)
    finally:
        client.close()
    for reply in replies:
        assert isinstance(reply, StageError) and reply.kind is ErrorKind.BAD_REQUEST, reply
        assert reply.image_index is None
    assert [r.request_id for r in replies].count("ok") == 3  # known once the header parsed
    assert isinstance(after, ImageEmbeddingResult)


def test_health_ready_and_metrics(encoder: EncoderProcess) -> None:
    status, body = encoder.get("/health")
    assert status == 200 and json.loads(body)["live"] is True
    status, body = encoder.get("/ready")
    assert status == 200 and json.loads(body)["ready"] is True
    assert encoder.get("/nope")[0] == 404
    status, body = encoder.get("/metrics")
    text = body.decode()
    for name in (
        "encoder_queue_images",
        "encoder_batch_images_bucket",
        "encoder_batch_patches_bucket",
        "encoder_encode_latency_seconds_bucket",
        "encoder_cache_hit_rate",
        "encoder_bytes_shipped_total",
        "encoder_vision_forwards_total",
    ):
        assert name in text, name
