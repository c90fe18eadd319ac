"""One request's generation as the HTTP side sees it: submit the job, then iterate text pieces.

``Generation`` owns the per-request asyncio queue that the orchestrator thread fills, the
incremental detokenizer and the stop strings. Iterating yields ``Piece``s (text, token
logprobs, finish reason); a stage error becomes an ``APIError``. Whatever way the iteration ends
(done, stop string, client gone, timeout, exception) ``close`` aborts the request in the cluster
unless it finished by itself.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from router.backend import Backend, Overloaded
from router.detokenize import Detokenizer, StopStrings
from router.jobs import Event, Job
from router.prepare import Prepared
from router.protocol import APIError, overloaded
from router.timing import RequestTiming
from shared.timeline import StageName
from shared.wire.messages import ErrorKind, FinishReason

_STATUS = {
    ErrorKind.BAD_REQUEST: (400, "invalid_request_error"),
    ErrorKind.BAD_IMAGE: (400, "invalid_request_error"),
    ErrorKind.DEADLINE_EXCEEDED: (504, "timeout_error"),
    ErrorKind.ABORTED: (499, "aborted"),
}


def new_id() -> str:
    return uuid.uuid4().hex


def stage_error(kind: ErrorKind, message: str) -> APIError:
    if kind in (ErrorKind.OVERLOADED, ErrorKind.UNAVAILABLE):
        return overloaded(message)
    status, type_ = _STATUS.get(kind, (500, "internal_error"))
    # An image the encoder could not decode has the code of one the router refused itself.
    return APIError(
        status, message, type=type_, code="invalid_image" if kind is ErrorKind.BAD_IMAGE else str(kind)
    )


@dataclass
class TokenLogprob:
    """One generated token's text and logprob, and the top-n alternatives (text, logprob), best first."""

    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Piece:
    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish: str | None = None  # the OpenAI API's finish_reason ("stop", "length"); None: more follows


class Generation:
    def __init__(
        self, orch: Backend, tokenizer: Any, prep: Prepared, rid: str, timeout_s: float,
        timing: RequestTiming | None = None,
    ) -> None:  # fmt: skip
        self.orch, self.tokenizer, self.prep, self.rid = orch, tokenizer, prep, rid
        self.timing = timing or RequestTiming.untraced()
        self.timeline: dict[str, Any] | None = None  # the request's, once it finished (``timing.py``)
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.detok = Detokenizer(tokenizer, prep.skip_special_tokens)
        self.stops = StopStrings(prep.stops, prep.include_stop)
        self.deadline = time.monotonic() + timeout_s
        self.completion_tokens = 0
        self.finished = False
        self.want_logprobs = prep.params.logprobs is not None
        self.stop_ids = frozenset() if prep.include_stop else frozenset(prep.params.stop_token_ids)
        self.min_tokens = prep.params.min_tokens
        self._first: Event | None = None

    async def start(self) -> None:
        """Submit, and wait for the first event so that errors before any token get a status code."""
        loop = asyncio.get_running_loop()

        def sink(ev: Event) -> None:  # called from the backend's thread
            loop.call_soon_threadsafe(self.events.put_nowait, ev)

        self.timing.stamp(StageName.PREPROCESS, self.timing.clock.mono)
        job = Job(
            self.rid,
            self.prep.prompt_ids,
            self.prep.images,
            self.prep.params,
            self.deadline,
            sink,
            self.timing,
        )
        try:
            self.orch.submit(job)
        except Overloaded as e:
            self.finished = True
            raise overloaded(str(e)) from None
        self._first = await self._next()
        if self._first.error is not None:
            self.finished = True
            raise stage_error(self._first.error, self._first.message)

    async def _next(self) -> Event:
        if not self.events.empty():  # queued while this side was busy: no timer to arm
            return self.events.get_nowait()
        try:  # a timeout scope, not wait_for: no task per event (4 against 12 us with one queued)
            async with asyncio.timeout(max(0.01, self.deadline - time.monotonic() + 5)):
                return await self.events.get()
        except TimeoutError:
            raise stage_error(ErrorKind.DEADLINE_EXCEEDED, "request timed out") from None

    async def pieces(self) -> AsyncIterator[Piece]:
        while not self.finished:
            ev, self._first = self._first or await self._next(), None
            if ev.error is not None:
                self.finished = True
                raise stage_error(ev.error, ev.message)
            text, held, lps = "", "", []
            # an answer that ends with a stop token (or EOS) has it counted, not in its text, unless
            # the request includes stop strings in it (vLLM)
            last = len(ev.tokens) - 1 if ev.finish is FinishReason.STOP else -1
            for i, (tok, lp) in enumerate(ev.tokens):
                self.completion_tokens += 1
                delta = self.detok.push(tok) if i != last or tok not in self.stop_ids else ""
                if self.want_logprobs:
                    top = ev.top[i] if i < len(ev.top) else []
                    lps.append(
                        TokenLogprob(
                            self._text(tok),
                            lp if lp is not None else 0.0,
                            [(self._text(t), v) for t, v in top],
                        )
                    )
                if self.completion_tokens > self.min_tokens:
                    text += delta
                else:  # min_tokens: no stop string may end in the first tokens' text
                    held += delta
            ended = ev.finish is not None
            if ended:
                text += self.detok.flush()
            out = self.stops.push(held, search=False)[0] if held else ""
            more, stopped = self.stops.push(text, final=ended)
            out += more
            if stopped or ended:
                self.timeline = self.timing.finish(self.orch.metrics, self.rid)
            if stopped:
                yield Piece(out, lps, "stop")
                return  # close() aborts the request in the workers
            if ended:
                self.finished = True
                yield Piece(out, lps, "length" if ev.finish is FinishReason.LENGTH else "stop")
                return
            if out or lps:
                yield Piece(out, lps)

    def has_ready(self) -> bool:
        """Whether the next piece's event is already here (iterating would not wait)."""
        return self._first is not None or not self.events.empty()

    def _text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def close(self, reason: str = "client gone") -> None:
        if not self.finished:
            self.finished = True
            self.orch.abort(self.rid, reason)
