"""Turning a request's ``Generation``s (one per choice: ``n``) into one JSON answer or an SSE
stream (shared by both endpoints).

JSON is written by orjson: UTF-8 as ``json.dumps(ensure_ascii=False)`` with compact separators
would write it, straight to bytes (floats may be spelled otherwise: ``0.00001`` for ``1e-05``).
Numbers JSON has not (NaN, infinities) become ``null`` where the stdlib wrote ``NaN`` (invalid
JSON); logprobs, the one place they could come from, are kept finite in ``router.protocol``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import JSONResponse as _JSONResponse

from router.backend import Backend
from router.generate import Generation, Piece, TokenLogprob
from router.prepare import Prepared
from router.protocol import APIError, usage
from router.timing import RequestTiming


async def collect(gen: Generation, request: Request) -> tuple[str, str, list[TokenLogprob]]:
    """All text; a client that goes away while it waits aborts the request."""
    text: list[str] = []
    finish = "stop"
    lps: list[TokenLogprob] = []
    it = gen.pieces().__aiter__()
    step: asyncio.Future | None = None
    try:
        while True:
            step = asyncio.ensure_future(it.__anext__())
            while not step.done():
                await asyncio.wait([step], timeout=0.5)
                if not step.done() and await request.is_disconnected():
                    step.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await step
                    raise APIError(499, "client disconnected", type="aborted")
            try:
                piece = step.result()
            except StopAsyncIteration:
                break
            text.append(piece.text)
            lps += piece.logprobs
            finish = piece.finish or finish
    finally:
        if step is not None and not step.done():  # cancelled (another choice failed): stop waiting
            step.cancel()
        gen.close()
    return "".join(text), finish, lps


def generations(
    backend: Backend, tokenizer: Any, prompts: list[Prepared], rid: str, n: int, timeout_s: float,
    request: Request, route: str,
) -> list[Generation]:  # fmt: skip
    """A request's choices: n per prompt, choice k * n + i the i-th of prompt k, each a
    ``Generation`` with its own timing (``rid`` alone for one, else ``rid-<choice>``: the workers
    see that many requests)."""
    total = len(prompts) * n
    return [
        Generation(
            backend, tokenizer, prepared.choice(i), rid if total == 1 else f"{rid}-{k * n + i}", timeout_s,
            RequestTiming(
                request.state.clock, backend.tracer, route, request.headers.get("traceparent", ""),
                backend.colocated,
            ),
        )
        for k, prepared in enumerate(prompts)
        for i in range(n)
    ]  # fmt: skip


async def start_all(gens: list[Generation]) -> None:
    """Submit every choice's generation at once and wait for their first events; the first error
    closes them all and is raised (a status code before any byte of the answer)."""
    results = await asyncio.gather(*(g.start() for g in gens), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        for g in gens:
            g.close()
        raise errors[0]


async def collect_all(gens: list[Generation], request: Request) -> list[tuple[str, str, list[TokenLogprob]]]:
    """``collect`` of every choice, concurrently; one that fails cancels (and aborts) the others."""
    if len(gens) == 1:
        return [await collect(gens[0], request)]
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(collect(g, request)) for g in gens]
    except BaseExceptionGroup as e:  # the first choice's error, as one choice would raise it
        raise e.exceptions[0] from None
    return [t.result() for t in tasks]


def with_timeline(body: dict[str, Any], gen: Generation) -> dict[str, Any]:
    """``body`` with the finished request's ``timeline`` (an extra field: seconds end to end, per
    stage, and each stage's span; see docs/ARCHITECTURE.md)."""
    if gen.timeline is not None:
        body["timeline"] = gen.timeline
    return body


def dumps(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj)
    except TypeError:  # a dict with keys other than str (orjson's error): as json.dumps writes them
        return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)


class JSONResponse(_JSONResponse):
    """Starlette's ``JSONResponse``, written by orjson."""

    def render(self, content: Any) -> bytes:
        return dumps(content)


def _event(obj: Any) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


async def sse(
    gen: Generation, first: dict | None, chunk: Callable[[str, str | None, list], dict | None],
    tail: dict | None, n_prompt: int,
) -> AsyncIterator[bytes]:  # fmt: skip
    """SSE events; cancelled when the client disconnects, which ``finally`` turns into an abort.

    Events that are ready together go out in one write: the role and the first text (``start``
    already holds the first token), the last text with the usage and ``[DONE]``, and whatever
    queued while the event loop was busy. Nothing waits for a later event: a write leaves as soon
    as the pieces at hand are out. The events are the same either way; only the writes are fewer.
    """
    try:
        out = _event(first) if first is not None else b""
        try:
            async for piece in gen.pieces():
                if piece.text or piece.logprobs or piece.finish:
                    body = chunk(piece.text, piece.finish, piece.logprobs)  # None: nothing to say yet
                    if body is not None:
                        out += _event(with_timeline(body, gen) if piece.finish else body)
                if out and not piece.finish and not gen.has_ready():
                    yield out
                    out = b""
        except APIError as e:
            out += _event(e.body())
        if tail is not None:
            tail["usage"] = usage(n_prompt, gen.completion_tokens)
            out += _event(tail)
        yield out + b"data: [DONE]\n\n"
    finally:
        gen.close()


def stream(
    gens: list[Generation], first: Callable[[int], dict] | None,
    chunk: Callable[[int, str, str | None, list], dict | None], tail: dict | None, n_prompt: int,
) -> AsyncIterator[bytes]:  # fmt: skip
    """The SSE events of a request's choices: ``sse`` for one, ``sse_choices`` for n > 1."""
    if len(gens) == 1:
        return sse(gens[0], first(0) if first is not None else None, partial(chunk, 0), tail, n_prompt)
    return sse_choices(gens, first, chunk, tail, n_prompt)


async def sse_choices(
    gens: list[Generation], first: Callable[[int], dict] | None,
    chunk: Callable[[int, str, str | None, list], dict | None], tail: dict | None, n_prompt: int,
) -> AsyncIterator[bytes]:  # fmt: skip
    """SSE events of n > 1 choices, as each one's pieces come (the chunks name their choice's
    index), written together when they are ready together like ``sse``'s. A choice's error ends
    the stream (after its error event); the client going away aborts every choice."""
    queue: asyncio.Queue[tuple[int, Piece | APIError | None]] = asyncio.Queue()

    async def pump(i: int, gen: Generation) -> None:
        try:
            async for piece in gen.pieces():
                queue.put_nowait((i, piece))
        except APIError as e:
            queue.put_nowait((i, e))
            return
        queue.put_nowait((i, None))

    tasks = [asyncio.ensure_future(pump(i, g)) for i, g in enumerate(gens)]
    try:
        out = b"".join(_event(first(i)) for i in range(len(gens))) if first is not None else b""
        live = len(gens)
        while live:
            i, item = await queue.get()
            if isinstance(item, APIError):
                out += _event(item.body())
                break
            if item is None:
                live -= 1
            elif item.text or item.logprobs or item.finish:
                body = chunk(i, item.text, item.finish, item.logprobs)
                if body is not None:
                    out += _event(with_timeline(body, gens[i]) if item.finish else body)
            if out and live and queue.empty():
                yield out
                out = b""
        if tail is not None:
            tail["usage"] = usage(n_prompt, sum(g.completion_tokens for g in gens))
            out += _event(tail)
        yield out + b"data: [DONE]\n\n"
    finally:
        for t in tasks:
            t.cancel()
        for g in gens:
            g.close()
