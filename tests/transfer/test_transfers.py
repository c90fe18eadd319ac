"""The KV transfers on loopback, zmq and mooncake alike: a prompt's KV moves block-exact in pieces
from one pool into the blocks a grant names; Mooncake's writes land in the registered pool itself
(nothing arrives as frames) and writes that cannot land are reported, not lost."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import torch

from shared.engine.kv_pool import KVPool
from shared.extras import MissingExtra
from shared.transfer import KVReceiver, KVSender, ReplyEvent, TransferReply, mooncake
from shared.transfer.mooncake import MooncakeKVReceiver, MooncakeKVSender, block_runs
from shared.transfer.zmq_transfer import ZmqKVReceiver, ZmqKVSender
from shared.wire.messages import KVDone, KVLayer, KVProgress, KVReserve, Sampling

pytestmark = pytest.mark.unit

LAYERS, BLOCK, HEADS, DIM = 3, 4, 2, 8
PROMPT = 37  # 10 blocks, the last one partial


def pool(num_blocks: int) -> KVPool:
    return KVPool(LAYERS, num_blocks, BLOCK, HEADS, DIM, torch.bfloat16, torch.device("cpu"))


@pytest.fixture(params=["zmq", "mooncake"])
def link(request) -> Iterator[tuple[KVSender, KVReceiver, KVPool, KVPool]]:
    src, dst = pool(16), pool(24)
    gen = torch.Generator().manual_seed(0)
    src.k.copy_(torch.randn(src.k.shape, generator=gen))
    src.v.copy_(torch.randn(src.v.shape, generator=gen))
    if request.param == "zmq":
        sender: KVSender = ZmqKVSender(src)
        receiver: KVReceiver = ZmqKVReceiver("tcp://127.0.0.1:0")
    else:
        sender = MooncakeKVSender(src, "127.0.0.1")
        receiver = MooncakeKVReceiver("tcp://127.0.0.1:0", dst, "127.0.0.1")
    yield sender, receiver, src, dst
    sender.close()
    receiver.close()


def until(poll: Callable[[float], list], done: Callable[[list], bool], timeout: float = 20.0) -> list:
    got: list = []
    deadline = time.monotonic() + timeout
    while not done(got) and time.monotonic() < deadline:
        got += poll(0.05)
    return got


def both(sender: KVSender, receiver: KVReceiver, replies: list) -> Callable[[float], list]:
    """Poll the receiver as a decode worker does; the sender meanwhile, as the prefill loop does."""

    def poll(timeout: float) -> list:
        replies.extend(sender.poll(0))
        return receiver.poll(timeout)

    return poll


def done(inbound: list) -> bool:
    return any(isinstance(m, KVDone) for m in inbound)


def reserve(rid: str) -> KVReserve:
    sampling = Sampling(0.0, 1.0, 0, 0.0, None, 8, [], True, None)
    return KVReserve(rid, list(range(PROMPT)), PROMPT, 0, sampling, LAYERS, "tcp://127.0.0.1:9", 1e12, "p")


def granted(sender: KVSender, receiver: KVReceiver, rid: str, blocks: list[int]) -> TransferReply:
    sender.reserve(receiver.address, reserve(rid), 1.0)
    assert [type(m) for m in until(receiver.poll, bool)] == [KVReserve]
    receiver.grant(rid, blocks)
    (reply,) = until(sender.poll, bool)
    assert reply.event is ReplyEvent.GRANTED and reply.grant is not None and reply.grant.blocks == blocks
    return reply


def test_kv_moves_in_pieces_into_the_granted_blocks(link):
    sender, receiver, src, dst = link
    src_table = [3, 4, 5, 9, 1, 2, 12, 13, 14, 0]  # runs and jumps
    dst_table = [7, 8, 9, 10, 20, 21, 2, 3, 15, 16]
    grant = granted(sender, receiver, "r1", dst_table).grant
    assert grant is not None
    nbytes = 0
    for start, end in ((0, 12), (12, 24), (24, PROMPT)):  # whole blocks, then the end of the prompt
        nbytes += sender.send(receiver.address, grant, src_table, start, end, 1.0)
    sender.finish(receiver.address, KVDone("r1", LAYERS, [5]), 1.0)
    replies: list[TransferReply] = []
    inbound = until(both(sender, receiver, replies), done)
    assert not replies
    assert isinstance(inbound[-1], KVDone) and inbound[-1].sampled == [5]
    layers = [m for m in inbound if isinstance(m, KVLayer)]
    for m in layers:  # what a decode worker does with frames (zmq only)
        dst.write_layer(dst_table, m.layer, m.keys, m.values, m.start)
    if receiver.one_sided:
        assert not layers and any(isinstance(m, KVProgress) for m in inbound)
        region = grant.region
        assert region is not None and (region.k_base, region.v_base) == (dst.k.data_ptr(), dst.v.data_ptr())
        assert nbytes == 2 * LAYERS * len(src_table) * src.k[0, 0].nbytes  # whole blocks
    else:
        assert len(layers) == 3 * LAYERS and nbytes == 2 * LAYERS * PROMPT * HEADS * DIM * 2
    for layer in range(LAYERS):
        want_k, want_v = src.read_layer(src_table, PROMPT, layer)
        got_k, got_v = dst.read_layer(dst_table, PROMPT, layer)
        assert torch.equal(got_k, want_k) and torch.equal(got_v, want_v)
    receiver.ack("r1")
    assert [r.event for r in until(sender.poll, bool)] == [ReplyEvent.ACKED]


def test_mooncake_writes_that_cannot_land_are_reported():
    src, dst = pool(16), pool(16)
    sender = MooncakeKVSender(src, "127.0.0.1")
    receiver = MooncakeKVReceiver("tcp://127.0.0.1:0", dst, "127.0.0.1")
    try:
        grant = granted(sender, receiver, "r2", list(range(10))).grant
        assert grant is not None
        receiver.endpoint.close()  # the decode pool is no longer registered: writes are refused
        sender.send(receiver.address, grant, list(range(10)), 0, PROMPT, 1.0)
        sender.finish(receiver.address, KVDone("r2", LAYERS, [5]), 1.0)
        replies = until(sender.poll, bool)
        assert [r.event for r in replies] == [ReplyEvent.FAILED], replies
        assert "failed" in replies[0].message
        time.sleep(0.2)
        assert not any(isinstance(m, KVDone) for m in receiver.poll(0.1))  # done never follows a failure
    finally:
        sender.close()
        receiver.endpoint.close = lambda: None  # type: ignore[method-assign]
        receiver.close()


def test_mooncake_sends_of_thousands_of_writes_land_whole():
    """A fragmented pool turns a long prompt into one write per block, layer and K/V: more than
    Mooncake's TCP transport queues per peer (~2k), so they go out in batches, and the next send
    to the same peer still works."""
    blocks = 400  # 2 * LAYERS * 400 = 2400 writes
    src, dst = pool(2 * blocks), pool(2 * blocks)
    src.k.copy_(torch.randn(src.k.shape, generator=torch.Generator().manual_seed(1)))
    src.v.copy_(torch.randn(src.v.shape, generator=torch.Generator().manual_seed(2)))
    sender = MooncakeKVSender(src, "127.0.0.1")
    receiver = MooncakeKVReceiver("tcp://127.0.0.1:0", dst, "127.0.0.1")
    tokens = blocks * BLOCK
    try:
        for rid, src_table, dst_table in (
            ("big", list(range(0, 2 * blocks, 2)), list(range(2 * blocks - 1, 0, -2))),
            ("next", list(range(1, 2 * blocks, 2)), list(range(0, 2 * blocks, 2))),
        ):
            assert len(block_runs(src_table, dst_table)) == blocks
            sender.reserve(receiver.address, reserve(rid), 1.0)
            until(receiver.poll, bool)
            receiver.grant(rid, dst_table)
            (reply,) = until(sender.poll, bool)
            assert reply.grant is not None
            sender.send(receiver.address, reply.grant, src_table, 0, tokens, 1.0)
            sender.finish(receiver.address, KVDone(rid, LAYERS, [1]), 1.0)
            replies: list[TransferReply] = []
            inbound = until(both(sender, receiver, replies), done, timeout=60)
            assert not replies and isinstance(inbound[-1], KVDone), (replies, inbound)
            assert [m.num_tokens for m in inbound if isinstance(m, KVProgress)] == [tokens]
            for layer in range(LAYERS):
                want_k, want_v = src.read_layer(src_table, tokens, layer)
                got_k, got_v = dst.read_layer(dst_table, tokens, layer)
                assert torch.equal(got_k, want_k) and torch.equal(got_v, want_v)
    finally:
        sender.close()
        receiver.close()


def test_a_grant_without_a_region_or_with_other_blocks_is_refused_before_writing():
    src = pool(16)
    sender = MooncakeKVSender(src, "127.0.0.1")
    zmq_receiver = ZmqKVReceiver("tcp://127.0.0.1:0")
    other = MooncakeKVReceiver(
        "tcp://127.0.0.1:0",
        KVPool(LAYERS, 16, 8, HEADS, DIM, torch.bfloat16, torch.device("cpu")),
        "127.0.0.1",
    )
    try:
        from shared.wire import WireError

        grant = granted(sender, zmq_receiver, "r3", list(range(10))).grant
        with pytest.raises(WireError, match="--kv-transfer zmq"):
            sender.send(zmq_receiver.address, grant, list(range(10)), 0, PROMPT, 1.0)
        grant = granted(sender, other, "r4", list(range(5))).grant
        with pytest.raises(WireError, match="same --block-size"):
            sender.send(other.address, grant, list(range(10)), 0, PROMPT, 1.0)
    finally:
        sender.close()
        zmq_receiver.close()
        other.close()


def test_block_runs_coalesce_only_what_is_consecutive_on_both_sides():
    assert block_runs([3, 4, 5, 9, 10], [7, 8, 9, 2, 4]) == [(3, 7, 3), (9, 2, 1), (10, 4, 1)]
    assert block_runs([], []) == []


def test_missing_mooncake_names_the_extra_and_missing_libraries_name_make_deps(monkeypatch):
    import importlib

    def no_module(name: str, *a, **k):
        raise ModuleNotFoundError(f"No module named {name!r}", name="mooncake")

    monkeypatch.setattr(importlib, "import_module", no_module)
    with pytest.raises(MissingExtra, match=r"epd-serve\[mooncake\]"):
        mooncake.transfer_engine()

    def no_library(name: str, *a, **k):
        raise ImportError("libibverbs.so.1: cannot open shared object file: No such file or directory")

    monkeypatch.setattr(importlib, "import_module", no_library)
    with pytest.raises(ImportError, match="make deps") as e:
        mooncake.transfer_engine()
    assert "libibverbs1" in str(e.value) and not isinstance(e.value, MissingExtra)
