"""One streaming chat request over httpx, timed chunk by chunk into a ``RequestRecord``.

Timing follows the common serving-benchmark convention (vLLM's): TTFT is the time from sending the
request to the first chunk that carries content; every later content chunk adds one inter-token gap
(the time since the previous content chunk), even when it carries several tokens, so ITL is a
per-chunk figure while TPOT (from the token count) is per token. E2E ends when the stream ends.
Token counts come from the final ``usage`` chunk; without one, completion tokens = content chunks.
A request never raises: HTTP errors, error events, timeouts and broken connections become a failed
record with an ``error_kind`` (``http_503``, ``stream_error``, ``timeout``, ``ReadError``, ...).

A server that sends a ``timeline`` (epd's router: in the chunk with the ``finish_reason``) has its
``stages`` kept in ``stages_s``. A server that answers with one JSON object although streaming was
asked for (``Content-Type: application/json``) is read whole: TTFT = E2E, one content chunk.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import httpx

from shared.loadgen.sse import Chunk, parse_completion, parse_line


@dataclass
class RequestRecord:
    """What happened to one request; times in seconds, ``start_s`` relative to the run's start.
    For a failed request ``e2e_s`` is the time until it failed."""

    index: int
    n_images: int = 0
    prompt_words: int = 0
    max_tokens: int = 0
    n_videos: int = 0
    start_s: float = 0.0
    ttft_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    e2e_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int = 0
    content_chunks: int = 0
    usage_reported: bool = False
    success: bool = False
    status: int | None = None
    error_kind: str | None = None
    error: str | None = None
    stages_s: dict[str, float] | None = None  # the response's timeline.stages; None: no timeline

    @property
    def tpot_s(self) -> float | None:
        """(E2E - TTFT) / (output tokens - 1); None unless it succeeded with more than one token."""
        if not self.success or self.completion_tokens < 2 or self.ttft_s is None or self.e2e_s is None:
            return None
        return (self.e2e_s - self.ttft_s) / (self.completion_tokens - 1)


def _error_message(status: int, body: bytes) -> str:
    text = body.decode("utf-8", errors="replace")
    try:
        err = json.loads(text).get("error", text)
        text = err.get("message", str(err)) if isinstance(err, dict) else str(err)
    except (json.JSONDecodeError, AttributeError):
        pass
    return f"HTTP {status}: {text[:300]}"


def _take_usage(rec: RequestRecord, chunk: Chunk) -> None:
    if chunk.usage:
        rec.usage_reported = True
        rec.prompt_tokens = chunk.usage.get("prompt_tokens", rec.prompt_tokens)
        rec.completion_tokens = chunk.usage.get("completion_tokens") or rec.completion_tokens


async def _stream(
    client: httpx.AsyncClient, url: str, payload: bytes, headers: dict, rec: RequestRecord, start: float
) -> None:
    async with client.stream("POST", url, content=payload, headers=headers) as resp:
        rec.status = resp.status_code
        if resp.status_code != 200:
            rec.error_kind, rec.error = (
                f"http_{resp.status_code}",
                _error_message(resp.status_code, await resp.aread()),
            )
            return
        if resp.headers.get("content-type", "").split(";")[0].strip() == "application/json":
            await _whole(resp, rec, start)
        else:
            await _events(resp, rec, start)
    if rec.error_kind is not None:
        return
    rec.e2e_s = time.perf_counter() - start
    if rec.ttft_s is None:
        rec.error_kind, rec.error = "no_content", "the stream ended without any content"
        return
    if not rec.usage_reported:
        rec.completion_tokens = rec.content_chunks
    rec.success = True


async def _whole(resp: httpx.Response, rec: RequestRecord, start: float) -> None:
    """A non-streamed answer: one JSON object, its content counted as one chunk."""
    chunk = parse_completion(await resp.aread())
    if chunk.error is not None:
        rec.error_kind, rec.error = "stream_error", chunk.error[:300]
        return
    _take_usage(rec, chunk)
    rec.stages_s = chunk.stages
    if chunk.content:
        rec.ttft_s, rec.content_chunks = time.perf_counter() - start, 1


async def _events(resp: httpx.Response, rec: RequestRecord, start: float) -> None:
    """A server-sent-event stream: TTFT, inter-chunk gaps, usage and the timeline, chunk by chunk."""
    last = start
    async for line in resp.aiter_lines():
        now = time.perf_counter()
        chunk = parse_line(line)
        if chunk is None:
            continue
        if chunk.done:
            break
        if chunk.error is not None:
            rec.error_kind, rec.error = "stream_error", chunk.error[:300]
            return
        _take_usage(rec, chunk)
        if chunk.stages is not None:
            rec.stages_s = chunk.stages
        if chunk.content:
            if rec.ttft_s is None:
                rec.ttft_s = now - start
            else:
                rec.itl_s.append(now - last)
            last = now
            rec.content_chunks += 1


async def send(
    client: httpx.AsyncClient, url: str, payload: bytes, headers: dict, rec: RequestRecord, t0: float,
    timeout: float,
) -> RequestRecord:  # fmt: skip
    """POST ``payload`` (a JSON chat body with ``stream: true``) and fill ``rec``; never raises."""
    start = time.perf_counter()
    rec.start_s = start - t0
    try:
        async with asyncio.timeout(timeout):
            await _stream(client, url, payload, headers, rec, start)
    except TimeoutError:
        rec.error_kind, rec.error = "timeout", f"no complete answer within {timeout:g} s"
    except Exception as e:  # a broken connection must not end the run
        rec.error_kind, rec.error = type(e).__name__, str(e)[:300] or type(e).__name__
    if rec.error_kind is not None:
        rec.success = False
        rec.e2e_s = time.perf_counter() - start if rec.e2e_s is None else rec.e2e_s
    return rec
