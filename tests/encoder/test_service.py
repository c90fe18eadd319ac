"""The encoder as a real process on loopback, with the test playing router and prefill."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from bench.clients.encoder import EncoderClient
from bench.clients.encoder_launch import EncoderProcess, start_encoder
from shared.wire import CacheMiss, ErrorKind, ImageEmbeddingResult, PullSocket, StageError
from shared.wire.assembly import ImageSet
from tests.encoder.conftest import collect, png
from tests.numerics import assert_close_scaled

pytestmark = pytest.mark.cluster


def assert_matches_alone(result: ImageEmbeddingResult, ref, key: str) -> None:
    """The service's fp32 features of an image (batched with whatever else was waiting, sent over the
    wire bit-exactly: see tests/wire/test_codec.py) equal encoding the image alone in this process, up
    to fp32 round-off scaled to the features. Not bitwise: the batch's row count changes the GEMMs'
    summation order on some CPUs' kernels (see tests/encoder/test_batch_invariance.py)."""
    assert result.embeds.dtype == torch.float32
    assert_close_scaled(result.embeds, ref.embeds, name=f"{key} embeds service vs alone")
    assert_close_scaled(result.deepstack, ref.deepstack, name=f"{key} deepstack service vs alone")


def test_concurrent_requests_match_in_process_encoding(
    encoder: EncoderProcess, inbox: PullSocket, reference
) -> None:
    requests = {
        "req-a": {0: png(64, 64, 1)},
        "req-b": {0: png(320, 200, 2), 1: png(96, 160, 3)},
        "req-c": {0: png(128, 128, 4), 1: png(300, 70, 5), 2: png(200, 260, 6)},
    }
    forwards_before = encoder.metric("encoder_vision_forwards_total")
    start = threading.Barrier(len(requests))

    def submit(request_id: str) -> None:
        client = EncoderClient(encoder.zmq)
        start.wait()
        client.submit(request_id, requests[request_id], inbox.endpoint)
        time.sleep(0.2)  # let the DEALER flush before closing
        client.close()

    threads = [threading.Thread(target=submit, args=(rid,)) for rid in requests]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = collect(inbox, sum(len(images) for images in requests.values()))
    assert all(isinstance(m, ImageEmbeddingResult) for m in got), [
        m for m in got if isinstance(m, StageError)
    ]
    by_key = {(m.request_id, m.image_index): m for m in got}
    assert set(by_key) == {(rid, i) for rid, images in requests.items() for i in images}
    for (rid, index), result in by_key.items():
        ref = reference(requests[rid][index])
        assert_matches_alone(result, ref, f"{rid}/{index}")
        assert result.num_tokens == ref.num_tokens and not result.cached
    forwards = encoder.metric("encoder_vision_forwards_total") - forwards_before
    print(f"\n6 images of 3 concurrent requests took {forwards:.0f} vision forwards")


def test_second_send_is_a_cache_hit_without_a_forward(encoder: EncoderProcess, inbox: PullSocket) -> None:
    image = png(150, 90, seed=77)
    client = EncoderClient(encoder.zmq)
    try:
        client.submit("first", {0: image}, inbox.endpoint)
        (first,) = collect(inbox, 1)
        forwards = encoder.metric("encoder_vision_forwards_total")
        hits = encoder.metric("encoder_cache_lookups_total", 'result="hit"')
        client.submit("second", {0: image}, inbox.endpoint)
        (second,) = collect(inbox, 1)
        client.submit("third", {0: image}, inbox.endpoint, with_bytes=False)  # hash only
        (third,) = collect(inbox, 1)
    finally:
        client.close()
    assert not first.cached and second.cached and third.cached
    assert torch.equal(first.embeds, second.embeds) and torch.equal(first.deepstack, third.deepstack)
    assert encoder.metric("encoder_vision_forwards_total") == forwards, "a cache hit ran the vision tower"
    assert encoder.metric("encoder_cache_lookups_total", 'result="hit"') == hits + 2
    print(f"\ncache hit rate so far: {encoder.metric('encoder_cache_hit_rate'):.2f}")


def test_hash_only_miss_is_answered_so_the_router_can_resend(
    encoder: EncoderProcess, inbox: PullSocket
) -> None:
    known, unknown = png(64, 96, seed=11), png(96, 64, seed=12)
    client = EncoderClient(encoder.zmq)
    try:
        client.submit("warm", {0: known}, inbox.endpoint)
        collect(inbox, 1)
        client.submit("mixed", {0: known, 1: unknown}, inbox.endpoint, with_bytes=False)
        miss = client.recv(timeout=10)
        assert isinstance(miss, CacheMiss) and miss.request_id == "mixed"
        assert miss.image_indexes == [1]
        (hit,) = collect(inbox, 1)  # the cached image went ahead
        assert hit.image_index == 0 and hit.cached
        client.submit("mixed", {1: unknown}, inbox.endpoint)  # the router resends with bytes
        (resent,) = collect(inbox, 1)
        assert resent.request_id == "mixed" and resent.image_index == 1 and not resent.cached
    finally:
        client.close()


def test_images_split_across_two_encoders_reassemble_in_order(
    encoder: EncoderProcess, checkpoint: Path, inbox: PullSocket, reference, tmp_path: Path
) -> None:
    second = start_encoder(checkpoint, "--torch-threads", "1", "--dtype", "float32", log_dir=tmp_path)
    images = {i: png(64 + 32 * i, 96, seed=100 + i) for i in range(4)}
    a, b = EncoderClient(encoder.zmq), EncoderClient(second.zmq)
    try:
        b.submit("split", {1: images[1], 3: images[3]}, inbox.endpoint)
        a.submit("split", {0: images[0], 2: images[2]}, inbox.endpoint)
        assembled = ImageSet("split", 4)
        for msg in collect(inbox, 4):
            assembled.add(msg)
        assert assembled.complete and not assembled.failed
        sources = {r.image_index: r.source for r in assembled.ordered()}
        assert sources[0] == sources[2] != sources[1] == sources[3]
        refs = [reference(images[i]) for i in range(4)]
        # Each encoder batched its two images; the reference encodes one at a time (round-off only).
        assert_close_scaled(assembled.embeds(), torch.cat([r.embeds for r in refs]), name="embeds in order")
        assert_close_scaled(
            assembled.deepstack(), torch.cat([r.deepstack for r in refs], dim=1), name="deepstack in order"
        )
    finally:
        a.close()
        b.close()
        assert second.stop() == 0, second.log()


def test_expired_deadline_is_reported_not_encoded(encoder: EncoderProcess, inbox: PullSocket) -> None:
    client = EncoderClient(encoder.zmq)
    try:
        client.submit("late", {0: png(64, 64, seed=5)}, inbox.endpoint, timeout_s=-1)
        (err,) = collect(inbox, 1)
    finally:
        client.close()
    assert (
        isinstance(err, StageError) and err.kind is ErrorKind.DEADLINE_EXCEEDED and err.request_id == "late"
    )
