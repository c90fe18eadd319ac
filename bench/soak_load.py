"""The soak's requests: a mix of what a long-lived cluster sees, in a closed or an open loop.

Each request has 0-3 synthetic images (``shared.loadgen``'s workload; each distinct image is used
``image_repeat`` times, so the encoder's cache and the prefix cache get hits and, with a small
cache, evictions), is streamed or not, and a share of the streamed ones are abandoned by the
client: it disconnects after 1-3 content chunks, or before any answer (a random delay of up to
``early_abort_s``, while the request is still being encoded or prefilled). An abandoned request
that ended before its disconnect counts as completed; any other failure is an error.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import numpy as np

from shared.loadgen.client import RequestRecord, send
from shared.loadgen.config import LoadConfig
from shared.loadgen.schedule import closed_loop, open_loop
from shared.loadgen.sse import parse_line
from shared.loadgen.workload import Workload

JSON = {"Content-Type": "application/json"}
Send = Callable[[int], Awaitable["Outcome"]]  # sends request i


@dataclass(frozen=True)
class Mix:
    images: str = "0:1,1:2,2:1,3:1"  # images per request (shared.loadgen's spec)
    image_size: str = "64x64:2,128x128:1"
    image_repeat: int = 3  # uses of each distinct image
    prompt_words: str = "4-24"
    max_tokens: str = "8-40"
    stream_share: float = 0.7
    abort_share: float = 0.2  # of the streamed requests
    early_abort_s: float = 0.05
    timeout_s: float = 120.0


@dataclass
class Outcome:
    kind: str  # "stream", "json" or "abort" (planned to be abandoned)
    record: RequestRecord
    abort_after: int | None = None  # "abort": content chunks before the disconnect (0: before any)
    aborted: bool = False  # the client disconnected as planned

    @property
    def error(self) -> bool:
        return not (self.record.success or self.aborted)


@dataclass
class Tally:
    outcomes: list[Outcome] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def errors(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error]

    def counts(self) -> dict[str, int]:
        c = Counter(o.kind for o in self.outcomes)
        c.update(aborted=sum(o.aborted for o in self.outcomes), errors=len(self.errors))
        return dict(c)

    def error_kinds(self) -> dict[str, int]:
        return dict(Counter(f"{o.record.error_kind}: {o.record.error}"[:160] for o in self.errors))


async def _abandon(
    client: httpx.AsyncClient, url: str, payload: bytes, rec: RequestRecord, chunks: int
) -> bool:
    """Stream until ``chunks`` content chunks came, then disconnect; True if it did."""
    async with client.stream("POST", url, content=payload, headers=JSON) as resp:
        rec.status = resp.status_code
        if resp.status_code != 200:
            rec.error_kind, rec.error = f"http_{resp.status_code}", (await resp.aread()).decode()[:300]
            return False
        seen = 0
        async for line in resp.aiter_lines():
            chunk = parse_line(line)
            if chunk is None or not (chunk.content or chunk.error or chunk.done):
                continue
            if chunk.error is not None:
                rec.error_kind, rec.error = "stream_error", chunk.error[:300]
                return False
            if chunk.done:
                break
            seen += 1
            if seen >= chunks:
                return True  # leaving the block closes the connection mid-stream
    rec.success = True
    return False


class Driver:
    """Draws mixed requests and sends them to ``base_url`` (the router, without /v1)."""

    def __init__(self, base_url: str, model: str, mix: Mix, seed: int = 0) -> None:
        self.url = base_url.rstrip("/") + "/v1/chat/completions"
        self.mix = mix
        cfg = LoadConfig(
            images=mix.images, image_size=mix.image_size, image_repeat=mix.image_repeat,
            prompt_words=mix.prompt_words, max_tokens=mix.max_tokens, ignore_eos=True, seed=seed,
        )  # fmt: skip
        self.workload = Workload(cfg, model)
        self.rng = np.random.default_rng([seed, 3])
        self.tally = Tally()

    async def one(self, client: httpx.AsyncClient, i: int, t0: float) -> Outcome:
        spec, mix, rng = self.workload.next(), self.mix, self.rng
        rec = RequestRecord(i, spec.n_images, spec.prompt_words, spec.max_tokens)
        streamed = rng.random() < mix.stream_share
        out = Outcome("stream" if streamed else "json", rec)
        if not streamed:
            spec.body.update(stream=False)
            spec.body.pop("stream_options")
        payload = json.dumps(spec.body).encode()
        if streamed and rng.random() < mix.abort_share:
            chunks = int(rng.integers(0, 4))
            out.kind, out.abort_after = "abort", chunks
            delay = float(rng.uniform(0, mix.early_abort_s)) if chunks == 0 else mix.timeout_s
            rec.start_s = time.perf_counter() - t0
            try:
                async with asyncio.timeout(delay):
                    out.aborted = await _abandon(client, self.url, payload, rec, chunks)
            except TimeoutError:
                out.aborted = chunks == 0  # the planned early disconnect (else: a real timeout)
                rec.error_kind = "client_abort" if out.aborted else "timeout"
                rec.error = f"no answer within {delay:g} s"
            except httpx.HTTPError as e:
                rec.error_kind, rec.error = type(e).__name__, str(e)[:300]
        else:
            await send(client, self.url, payload, JSON, rec, t0, mix.timeout_s)
        self.tally.outcomes.append(out)
        return out

    async def closed(self, n: int, concurrency: int) -> Tally:
        return await self._run(lambda do: closed_loop(n, concurrency, do))

    async def open(self, seconds: float, rate: float, max_inflight: int) -> Tally:
        n = max(1, round(seconds * rate))
        rng = np.random.default_rng([int(self.rng.integers(1 << 31)), 4])
        return await self._run(lambda do: open_loop(n, rate, rng, do, max_inflight))

    async def _run(self, schedule: Callable[[Send], Awaitable[list[Outcome]]]) -> Tally:
        self.tally = Tally()
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        t0 = time.perf_counter()
        async with httpx.AsyncClient(timeout=self.mix.timeout_s, limits=limits) as client:
            await schedule(lambda i: self.one(client, i, t0))
        self.tally.duration_s = time.perf_counter() - t0
        return self.tally


def first_model(base_url: str) -> str:
    return httpx.get(base_url.rstrip("/") + "/v1/models", timeout=10).json()["data"][0]["id"]
