"""Decode's importer: a reservation the engine cannot use is refused at once, and the rest of the
batch it came in is handled as usual (over a real ZMQ sender and receiver on loopback)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator

import pytest
import torch

from services.decode.imports import Importer
from shared.engine import Engine, EngineConfig, SamplingParams, SequenceState
from shared.engine.guided import Guides
from shared.engine.kv_pool import KVPool
from shared.models.loader import load_model
from shared.transfer import ReplyEvent, TransferReply, ZmqKVReceiver, ZmqKVSender, reservation
from shared.transfer.base import KVInbound
from shared.wire.messages import ErrorKind, KVReserve
from tests.engine.conftest import SPEC

pytestmark = pytest.mark.unit

SEED7 = SamplingParams(temperature=1.0, seed=7, max_tokens=16, ignore_eos=True)


@pytest.fixture(scope="module")
def lm(tiny_checkpoint):
    return load_model(tiny_checkpoint(**SPEC), parts={"language"}, dtype="float32")


@pytest.fixture
def link() -> Iterator[tuple[ZmqKVSender, ZmqKVReceiver]]:
    pool = KVPool(3, 4, 8, 2, 16, torch.float32, torch.device("cpu"))
    sender, receiver = ZmqKVSender(pool), ZmqKVReceiver("tcp://127.0.0.1:0")
    yield sender, receiver
    sender.close()
    receiver.close()


def reserve(rid: str, num_tokens: int, receiver: ZmqKVReceiver) -> KVReserve:
    state = SequenceState(rid, list(range(1, num_tokens + 1)), num_tokens - 1, 0, SEED7)
    return reservation(state, 3, "tcp://127.0.0.1:9", time.time() + 30, "prefill@test")


def collect(poll: Callable[[float], list], n: int) -> list:
    got: list = []
    deadline = time.monotonic() + 10
    while len(got) < n and time.monotonic() < deadline:
        got += poll(0.1)
    return got


def too_big(msg: KVReserve) -> KVReserve:
    return msg  # valid on the wire; the engine refuses it (ValueError): more tokens than its pool


def mistyped(msg: KVReserve) -> KVReserve:
    # Stands in for any state that passed the wire but that the engine chokes on (here a TypeError).
    return dataclasses.replace(msg, sampling=dataclasses.replace(msg.sampling, temperature="hot"))


@pytest.mark.parametrize(("spoil", "cause"), [(too_big, "ValueError"), (mistyped, "TypeError")])
def test_an_unusable_state_is_refused_at_once_and_the_batch_goes_on(lm, link, spoil, cause):
    sender, receiver = link
    engine = Engine(lm, EngineConfig(block_size=8, num_blocks=30))
    failed: list[tuple[str, ErrorKind]] = []
    importer = Importer(engine, receiver, lambda rid, to, kind, m: failed.append((rid, kind)), 4, 30.0)
    bad = reserve("bad", 400 if spoil is too_big else 20, receiver)
    good = reserve("good", 20, receiver)
    for msg in (bad, good):
        sender.reserve(receiver.address, msg, 1.0)
    turn: list[KVInbound] = collect(receiver.poll, 2)
    assert [m.request_id for m in turn] == ["bad", "good"]
    importer.handle([spoil(turn[0]), turn[1]])
    replies: list[TransferReply] = collect(sender.poll, 2)
    by_id = {r.request_id: r for r in replies}
    assert by_id["bad"].event is ReplyEvent.REFUSED and by_id["bad"].kind is ErrorKind.BAD_REQUEST
    assert by_id["bad"].message.startswith(f"unusable sequence state: {cause}")
    assert by_id["good"].event is ReplyEvent.GRANTED
    assert list(importer.importing) == ["good"] and not importer.pending
    assert importer.refused == {"bad_request": 1} and not failed  # prefill tells the router
    assert engine.num_free_blocks == 30 - 3  # only the good one's 20 tokens hold blocks


def test_a_transfer_the_router_aborted_before_it_came_is_refused(lm, link):
    """The router's abort overtook prefill's reservation: the transfer is refused, not run to
    max_tokens for nobody; other requests are unaffected."""
    sender, receiver = link
    engine = Engine(lm, EngineConfig(block_size=8, num_blocks=30))
    importer = Importer(engine, receiver, lambda rid, to, kind, m: None, 4, 30.0)
    importer.forget_later("gone")
    for rid in ("gone", "kept"):
        sender.reserve(receiver.address, reserve(rid, 20, receiver), 1.0)
    importer.handle(collect(receiver.poll, 2))
    by_id = {r.request_id: r for r in collect(sender.poll, 2)}
    assert by_id["gone"].event is ReplyEvent.REFUSED and "aborted" in by_id["gone"].message
    assert by_id["kept"].event is ReplyEvent.GRANTED and list(importer.importing) == ["kept"]
    assert not importer.aborted  # remembered once


def test_a_guided_reservation_waits_for_its_automaton_and_lets_the_next_go(lm, link, tiny_checkpoint):
    """Its guide compiles in the background meanwhile (slowed here to three turns); the plain
    reservation behind it is granted first; an expression that cannot guide is refused."""
    sender, receiver = link
    guides = Guides.from_checkpoint(tiny_checkpoint(**SPEC), lm.config.eos_token_ids[0])
    assert guides is not None
    engine = Engine(lm, EngineConfig(block_size=8, num_blocks=30), guides)
    slow, ready = [3], guides.ready

    def slowed(expression: str) -> bool:
        slow[0] -= 1
        return ready(expression) and slow[0] < 0

    guides.ready = slowed
    importer = Importer(engine, receiver, lambda rid, to, kind, m: None, 4, 30.0)
    msgs = [reserve(rid, 20, receiver) for rid in ("guided", "plain", "broken")]
    for msg, guide in zip(msgs, ("[ab]+", "", "(unclosed"), strict=True):
        sender.reserve(
            receiver.address,
            dataclasses.replace(msg, sampling=dataclasses.replace(msg.sampling, guide=guide)),
            1.0,
        )
    importer.handle(collect(receiver.poll, 3))
    events: list[tuple[str, ReplyEvent]] = []
    deadline = time.monotonic() + 30
    while len([e for e in events if e[1] is not ReplyEvent.QUEUED]) < 3 and time.monotonic() < deadline:
        importer.grant_waiting()
        events += [(r.request_id, r.event) for r in sender.poll(0.05)]
    done = [e for e in events if e[1] is not ReplyEvent.QUEUED]
    assert done.index(("plain", ReplyEvent.GRANTED)) < done.index(("guided", ReplyEvent.GRANTED))
    assert ("broken", ReplyEvent.REFUSED) in done and sorted(importer.importing) == ["guided", "plain"]
