"""``n`` > 1: a request's choices run side by side (``router.responses``: ``start_all``,
``collect_all``, ``sse_choices``), each with its index, its seed, its own end."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fastapi import Request

from router.generate import Generation
from router.jobs import Event
from router.prepare import Prepared
from router.protocol import APIError, chat_chunk
from router.responses import collect_all, sse_choices, start_all
from shared.engine import SamplingParams
from shared.wire.messages import ErrorKind, FinishReason
from tests.router.scripted import Scripted, demo_tokenizer

pytestmark = pytest.mark.unit

WORDS = " one two"  # " one", " t", "w", "o" in the demo's tokenizer


def ids() -> list[int]:
    return demo_tokenizer().encode(WORDS, add_special_tokens=False)


def choices(n: int, seed: int | None = 5) -> tuple[Scripted, list[Generation]]:
    backend = Scripted()
    prep = Prepared([1, 2, 3], [], SamplingParams(max_tokens=8, seed=seed), [])
    gens = [Generation(backend, demo_tokenizer(), prep.choice(i), f"c-{i}", 30.0) for i in range(n)]
    return backend, gens


def token(i: int, finish: FinishReason | None = None) -> Event:
    return Event(tokens=[(ids()[i], None)], finish=finish)


async def submitted(backend: Scripted, n: int) -> None:
    """Until ``start_all``'s tasks have submitted the n jobs."""
    while len(backend.jobs) < n:
        await asyncio.sleep(0)


async def started(n: int) -> tuple[Scripted, list[Generation]]:
    """n choices, started: each has had its first token."""
    backend, gens = choices(n)
    starting = asyncio.ensure_future(start_all(gens))
    await submitted(backend, n)
    for j in backend.jobs:
        j.sink(token(0))
    await starting
    return backend, gens


class Connected:
    """What ``collect`` asks of the HTTP request: the client never leaves."""

    async def is_disconnected(self) -> bool:
        return False


def test_each_choice_draws_with_its_own_seed():
    prep = Prepared([1], [], SamplingParams(seed=(1 << 63) - 1), [])
    assert [prep.choice(i).params.seed for i in range(3)] == [(1 << 63) - 1, 0, 1]
    unseeded = Prepared([1], [], SamplingParams(), [])
    assert unseeded.choice(2) is unseeded


def test_choices_stream_side_by_side_with_their_indices():
    async def go() -> tuple[list[str], Scripted]:
        backend, gens = choices(2)
        starting = asyncio.ensure_future(start_all(gens))
        await submitted(backend, len(gens))
        assert [j.params.seed for j in backend.jobs] == [5, 6]
        backend.job("c-0").sink(token(0))
        backend.job("c-1").sink(token(3))
        await starting

        def chunk(i: int, text: str | None, finish: str | None, lps: list) -> dict:
            return chat_chunk("r", "demo", {} if text is None else {"content": text}, finish, index=i)

        def first(i: int) -> dict:
            return chat_chunk("r", "demo", {"role": "assistant", "content": ""}, index=i)

        tail = chat_chunk("r", "demo", None, usage_={})
        writes = []
        feed = [("c-1", token(2)), ("c-0", token(1)), ("c-0", token(2, FinishReason.STOP)),
                ("c-1", token(1, FinishReason.LENGTH))]  # fmt: skip
        async for w in sse_choices(gens, first, chunk, tail, 3):
            writes.append(w)
            if feed:
                rid, ev = feed.pop(0)
                backend.job(rid).sink(ev)
        return [e for w in writes for e in w.decode().split("\n\n") if e], backend

    events, backend = asyncio.run(go())
    assert events[-1] == "data: [DONE]" and backend.aborted == []
    bodies = [json.loads(e[6:]) for e in events[:-1]]
    usage = bodies.pop()["usage"]
    assert usage == {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}
    by_index: dict[int, list[Any]] = {0: [], 1: []}
    for b in bodies:
        (c,) = b["choices"]
        by_index[c["index"]].append(c)
    text = {i: "".join(c["delta"].get("content", "") for c in cs) for i, cs in by_index.items()}
    assert text == {0: " one tw", 1: "ow t"}
    assert [c["finish_reason"] for c in by_index[0]][-1] == "stop"
    assert [c["finish_reason"] for c in by_index[1]][-1] == "length"
    assert by_index[0][0]["delta"] == {"role": "assistant", "content": ""}


def test_a_failing_choice_ends_the_stream_and_aborts_the_others():
    async def go() -> tuple[list[str], Scripted]:
        backend, gens = await started(3)
        backend.job("c-1").sink(Event(error=ErrorKind.INTERNAL, message="worker lost"))

        def chunk(i: int, text: str | None, finish: str | None, lps: list) -> dict:
            return chat_chunk("r", "demo", {"content": text or ""}, finish, index=i)

        return [w.decode() async for w in sse_choices(gens, None, chunk, None, 3)], backend

    writes, backend = asyncio.run(go())
    assert "worker lost" in "".join(writes) and writes[-1].endswith("data: [DONE]\n\n")
    assert sorted(backend.aborted) == ["c-0", "c-2"]  # c-1 ended by its error


def test_an_error_before_any_token_closes_every_choice():
    async def go() -> Scripted:
        backend, gens = choices(2)
        starting = asyncio.ensure_future(start_all(gens))
        await submitted(backend, len(gens))
        backend.job("c-0").sink(token(0))
        backend.job("c-1").sink(Event(error=ErrorKind.BAD_REQUEST, message="nope"))
        with pytest.raises(APIError, match="nope"):
            await starting
        return backend

    assert asyncio.run(go()).aborted == ["c-0"]


def test_collecting_choices_stops_them_all_at_the_first_failure():
    async def go() -> Scripted:
        backend, gens = await started(2)
        backend.job("c-0").sink(Event(error=ErrorKind.DEADLINE_EXCEEDED, message="too slow"))
        request: Request = Connected()  # type: ignore[assignment]
        with pytest.raises(APIError, match="too slow"):
            await collect_all(gens, request)
        return backend

    assert asyncio.run(go()).aborted == ["c-1"]
