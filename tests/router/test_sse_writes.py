"""The SSE stream's writes (``router.responses.sse``): events that are ready together leave in one
write, nothing waits for an event still to come, and the events are the same either way."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from router.generate import Generation
from router.jobs import Event
from router.prepare import Prepared
from router.protocol import chat_chunk
from router.responses import sse
from shared.engine import SamplingParams
from shared.wire.messages import FinishReason
from tests.router.scripted import Scripted, demo_tokenizer

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return demo_tokenizer()


def chunk(text: str | None, finish: str | None, lps: list) -> dict:
    return chat_chunk("chatcmpl-t", "demo", {} if text is None else {"content": text}, finish)


def events(writes: list[bytes]) -> list[str]:
    return [e for w in writes for e in w.decode().split("\n\n") if e]


async def stream(
    tokenizer: Any, feed: Callable[[Callable[[Event], None], list[bytes]], None]
) -> tuple[list[bytes], Scripted]:
    """The writes of ``sse`` for a generation whose events ``feed(sink, writes)`` sends: called
    before each write is taken (with the writes so far), it may send nothing, one event or several."""
    backend = Scripted()
    prep = Prepared([1, 2, 3], [], SamplingParams(max_tokens=8), [])
    gen = Generation(backend, tokenizer, prep, "chatcmpl-t", 30.0)
    writes: list[bytes] = []
    starting = asyncio.ensure_future(gen.start())
    await asyncio.sleep(0)
    feed(backend.jobs[0].sink, writes)
    await starting
    it = sse(gen, chunk("", None, []) | {"choices": [{"delta": {"role": "assistant"}}]}, chunk, None, 3)
    async for w in it:
        writes.append(w)
        feed(backend.jobs[0].sink, writes)
    return writes, backend


WORDS = " one two"  # four tokens of the demo tokenizer, each a text delta of its own


def token(tokenizer: Any, i: int, finish: FinishReason | None = None) -> Event:
    ids = tokenizer.encode(WORDS, add_special_tokens=False)
    return Event(tokens=[(ids[i], None)], finish=finish)


def test_events_ready_together_leave_in_one_write(tokenizer: Any) -> None:
    def feed(sink: Callable[[Event], None], writes: list[bytes]) -> None:
        if not writes:  # everything at once, before the first write
            for i in range(4):
                sink(token(tokenizer, i, FinishReason.LENGTH if i == 3 else None))

    writes, backend = asyncio.run(stream(tokenizer, feed))
    assert len(writes) == 1
    evs = events(writes)
    assert evs[-1] == "data: [DONE]" and len(evs) == 6  # role, four tokens, [DONE]
    assert json.loads(evs[0][6:])["choices"][0]["delta"]["role"] == "assistant"
    assert json.loads(evs[4][6:])["choices"][0]["finish_reason"] == "length"
    assert "".join(json.loads(e[6:])["choices"][0]["delta"].get("content", "") for e in evs[:-1]) == WORDS


def test_nothing_waits_for_an_event_still_to_come(tokenizer: Any) -> None:
    sent: list[int] = []

    def feed(sink: Callable[[Event], None], writes: list[bytes]) -> None:
        if not writes:
            sink(token(tokenizer, 0))  # the first token: it goes with the role, alone
            sent.append(1)
        elif len(sent) < 3:
            sink(token(tokenizer, len(sent)))  # one event per write
            sent.append(1)
        elif len(sent) == 3:
            sink(token(tokenizer, 3, FinishReason.LENGTH))  # the last: with [DONE]
            sent.append(1)

    writes, backend = asyncio.run(stream(tokenizer, feed))
    assert [len(events([w])) for w in writes] == [2, 1, 1, 2]
    evs = events(writes)
    text = "".join(json.loads(e[6:])["choices"][0]["delta"].get("content", "") for e in evs[:-1])
    assert text == WORDS and evs[-1] == "data: [DONE]" and backend.aborted == []


def test_a_generation_that_hears_nothing_times_out(tokenizer: Any) -> None:
    """No event before the deadline (and its 5 s of slack): a 504, and the request is aborted."""
    from router.protocol import APIError

    async def go() -> tuple[APIError, Scripted]:
        backend = Scripted()
        gen = Generation(
            backend, tokenizer, Prepared([1, 2, 3], [], SamplingParams(max_tokens=8), []), "late", 30.0
        )
        gen.deadline = time.monotonic() - 4.8  # 0.2 s left of the slack
        with pytest.raises(APIError) as e:
            await gen.start()
        gen.close()
        return e.value, backend

    error, backend = asyncio.run(go())
    assert error.status == 504 and error.message == "request timed out" and backend.aborted == ["late"]
