"""Failures: a decode worker killed mid-run, a decode worker that never existed, bad messages, a
prefill worker gone mid-transfer.

The killed worker's requests end with errors within the router's heartbeat deadline, the others
finish, and prefill ends with every KV block free; a decode worker whose prefill died frees what
it had reserved.
"""

from __future__ import annotations

import time

import pytest
import torch

from bench.clients.prefill import DecodeTarget
from shared.engine import SamplingParams
from shared.engine.kv_pool import KVPool
from shared.multimodal.vision_inputs import ImageProcessorConfig
from shared.transfer import ReplyEvent, sampling_to_wire
from shared.transfer.config import TransferConfig, build_sender
from shared.wire import DealerSocket, PullSocket, StageError
from shared.wire.messages import ErrorKind, KVReserve, LoadReport
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


def test_prefill_gone_mid_transfer_frees_the_decode_reservation(cluster):
    """A prefill worker dies after its reservation was granted and part of the KV arrived: the
    decode worker drops the import once it has heard nothing for --transfer-timeout-s, frees its
    blocks and tells the router. This test plays that prefill worker with the real sender (a
    killed process would race its own transfer, which tiny models finish in milliseconds)."""
    cfg, text = cluster.config, cluster.config.text
    inbox = PullSocket("tcp://127.0.0.1:0", bind=True, accept=[StageError, LoadReport])
    pool = KVPool(
        text.num_hidden_layers, 256, 16, text.num_key_value_heads, text.head_dim, torch.float32,
        torch.device("cpu"),
    )  # fmt: skip
    sender = build_sender(TransferConfig(kv_transfer=cluster.transfer), pool, "127.0.0.1")
    try:
        decode = cluster.decode("--transfer-timeout-s", "2", report_to=inbox.endpoint)
        total = decode.metric("decode_total_blocks")
        kv = target(decode).kv
        prompt = make_prompt(cfg, ImageProcessorConfig.from_checkpoint(cluster.ckpt), 5, [200]).ids
        reserve = KVReserve(
            "orphaned", prompt, len(prompt), 0, sampling_to_wire(SHORT), text.num_hidden_layers,
            inbox.endpoint, time.time() + 60, "prefill@test",
        )  # fmt: skip
        sender.reserve(kv, reserve, 5.0)
        deadline, replies = time.monotonic() + 30, []
        while not replies and time.monotonic() < deadline:
            replies = sender.poll(0.1)
        assert [r.event for r in replies] == [ReplyEvent.GRANTED], replies
        grant = replies[0].grant
        assert grant is not None and len(grant.blocks) >= 200 // 16
        sender.send(kv, grant, list(range(len(grant.blocks))), 0, 64, 5.0)  # 4 of 13 blocks, then silence
        assert wait_for(lambda: decode.metric("decode_free_blocks") < total, 10, 0.02)
        assert wait_for(lambda: decode.metric("decode_free_blocks") == total, 15, 0.05), cluster.logs()
        assert decode.metric("decode_errors_total", 'kind="unavailable"') == 1
        error = None
        while error is None and (msg := inbox.recv(5.0)) is not None:
            error = msg if isinstance(msg, StageError) else None
        assert error is not None and error.request_id == "orphaned", error
        assert error.kind is ErrorKind.UNAVAILABLE and "did not finish" in error.message
        assert decode.get("/health")[0] == 200
    finally:
        sender.close()
        inbox.close()
