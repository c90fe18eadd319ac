"""Prefill's waiting room (``services.prefill.waiting``): a request leaves it once its images are in
and its guide's automaton is compiled, or failed when its guide cannot compile."""

from __future__ import annotations

import time

import pytest

from services.prefill.waiting import WaitingRoom
from shared.wire.messages import PrefillRequest, Sampling

pytestmark = pytest.mark.unit


def text_request(rid: str, guide: str = "") -> PrefillRequest:
    sampling = Sampling(0.0, 1.0, 0, 0.0, None, 4, [], False, None, guide=guide)
    return PrefillRequest(
        rid,
        list(range(10)),
        [],
        0,
        [],
        sampling,
        "tcp://127.0.0.1:5700",
        "tcp://127.0.0.1:5800",
        time.time() + 30,
    )


def test_a_guided_request_waits_for_its_automaton():
    room = WaitingRoom(8, 1 << 20, 30.0)
    for rid, guide in (("plain", ""), ("guided", "a+"), ("broken", "(")):
        room.add_request(text_request(rid, guide))
    compiled: set[str] = set()

    def ready(guide: str) -> bool:
        if guide == "(":
            raise ValueError("the guide's expression cannot be used")
        return guide in compiled

    first = room.pop_done(ready)
    assert {w.msg.request_id: w.problem for w in first} == {
        "plain": "",
        "broken": "the guide's expression cannot be used",
    }
    assert len(room) == 1 and room.pop_done(ready) == []
    compiled.add("a+")
    assert [w.msg.request_id for w in room.pop_done(ready)] == ["guided"] and len(room) == 0
