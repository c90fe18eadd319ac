"""Turning a ``Generation`` into one JSON answer or an SSE stream (shared by both endpoints).

JSON is written by orjson: UTF-8 as ``json.dumps(ensure_ascii=False)`` with compact separators
would write it, straight to bytes (floats may be spelled otherwise: ``0.00001`` for ``1e-05``).
Numbers JSON has not (NaN, infinities) become ``null`` where the stdlib wrote ``NaN`` (invalid
JSON); logprobs, the one place they could come from, are kept finite in ``router.protocol``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import JSONResponse as _JSONResponse

from router.generate import Generation, TokenLogprob
from router.protocol import APIError, usage


async def collect(gen: Generation, request: Request) -> tuple[str, str, list[TokenLogprob]]:
    """All text; a client that goes away while it waits aborts the request."""
    text: list[str] = []
    finish = "stop"
    lps: list[TokenLogprob] = []
    it = gen.pieces().__aiter__()
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
        gen.close()
    return "".join(text), finish, lps


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
    gen: Generation, first: dict | None, chunk: Callable[[str | None, str | None, list], dict],
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
                    body = chunk(piece.text, piece.finish, piece.logprobs)
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
