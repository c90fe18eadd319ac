"""Failures: a decode worker killed mid-run, a decode worker that never existed, bad messages.

The killed worker's requests end with errors within the router's heartbeat deadline, the others
finish, and prefill ends with every KV block free.
"""

from __future__ import annotations

import time

import pytest

from bench.clients.prefill import DecodeTarget
from shared.engine import SamplingParams
from shared.multimodal.vision_inputs import ImageProcessorConfig
from shared.wire import DealerSocket, StageError
from shared.wire.messages import ErrorKind
from tests.cluster import wait_for
from tests.disagg.conftest import make_prompt, target

pytestmark = pytest.mark.cluster

SHORT = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)
LONG = SamplingParams(temperature=0, max_tokens=10_000, ignore_eos=True)  # still running when killed


def test_killed_decode_worker(cluster):
    cfg = cluster.config
    processor = ImageProcessorConfig.from_checkpoint(cluster.ckpt)
    client = cluster.new_client(heartbeat_timeout_s=1.5)
    try:
        healthy = cluster.decode(report_to=client.reply_to)
        victim = cluster.decode(report_to=client.reply_to)
        rids = {}
        for i in range(8):
            pieces = [30 + i, (64, 64), 10] if i % 2 else [200 + i]
            p = make_prompt(cfg, processor, seed=300 + i, pieces=pieces)
            dest = victim if i % 2 else healthy
            rid = f"kill-{i}"
            client.submit(rid, p.ids, p.images, LONG if dest is victim else SHORT, target(dest), timeout_s=60)
            rids[rid] = dest
        victim_rids = [r for r, d in rids.items() if d is victim]
        # Kill once the victim has streamed tokens (mid-generation), while others may still transfer.
        assert wait_for(
            lambda: (client.poll(0.02), any(len(client.outcomes[r].tokens) > 3 for r in victim_rids))[1],
            30,
            0.05,
        )
        victim.kill()
        killed_at = time.monotonic()
        outcomes = client.collect(60)
        for rid, dest in rids.items():
            o = outcomes[rid]
            if dest is victim:
                assert o.error is not None and o.error.kind is ErrorKind.UNAVAILABLE, (rid, o)
            else:
                assert o.error is None and o.finish_reason == "length" and len(o.tokens) == 200, (
                    rid,
                    o.error,
                )
        took = time.monotonic() - killed_at
        print(
            f"\nvictim killed: its {len(victim_rids)} requests failed, the others finished, within {took:.1f}s"
        )
        prefill = cluster.prefill
        assert wait_for(
            lambda: (
                prefill.metric("prefill_free_blocks") == prefill.metric("prefill_total_blocks")
                and prefill.metric("prefill_transfers") == 0
            ),
            15,
            0.05,
        ), cluster.logs()
    finally:
        client.close()


def test_unreachable_decode_worker_is_reported(cluster):
    """A decode address with nobody behind it: prefill sends the first token, then gives up on the
    reservation after its reply timeout and reports ``unavailable``; its blocks are freed."""
    client = cluster.new_client(heartbeat_timeout_s=60)
    try:
        nobody = DecodeTarget("tcp://127.0.0.1:1", "tcp://127.0.0.1:2")
        client.submit("nowhere", list(range(40)), [], SamplingParams(temperature=0, max_tokens=5), nobody, 30)
        o = client.collect(20)["nowhere"]
        assert len(o.tokens) == 1 and o.error is not None and o.error.kind is ErrorKind.UNAVAILABLE, o
        prefill = cluster.prefill
        assert wait_for(
            lambda: prefill.metric("prefill_free_blocks") == prefill.metric("prefill_total_blocks"), 5, 0.05
        )
    finally:
        client.close()


def test_malformed_request_gets_an_error_and_prefill_keeps_serving(cluster):
    sock = DealerSocket(cluster.prefill.info["zmq"], bind=False, accept=[StageError])
    try:
        sock.zmq_socket.send_multipart([b"\x81\xa1v\x01", b"junk"])
        reply = sock.recv(10)
        assert isinstance(reply, StageError) and reply.kind is ErrorKind.BAD_REQUEST
    finally:
        sock.close()
    status, _ = cluster.prefill.get("/health")
    assert status == 200
