"""When requests are sent: a closed loop at fixed concurrency, or open-loop Poisson arrivals.

Both take ``do(i)``, a coroutine that sends request i and returns its record, and return the
records in request order once every request has finished.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import numpy as np

T = TypeVar("T")


async def closed_loop(n: int, concurrency: int, do: Callable[[int], Awaitable[T]]) -> list[T]:
    """``concurrency`` workers; each sends its next request as soon as its previous one ends."""
    results: list[T | None] = [None] * n
    indexes = iter(range(n))

    async def worker() -> None:
        for i in indexes:  # the shared iterator hands each index to exactly one worker
            results[i] = await do(i)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))
    return results  # type: ignore[return-value]


def arrival_times(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Offsets (s) of n Poisson arrivals at ``rate``/s, the first at 0; all 0 for an infinite rate."""
    if math.isinf(rate):
        return np.zeros(n)
    gaps = rng.exponential(1.0 / rate, n)  # [n]
    gaps[0] = 0.0
    return np.cumsum(gaps)


async def open_loop(
    n: int, rate: float, rng: np.random.Generator, do: Callable[[int], Awaitable[T]],
    max_concurrency: int | None = None,
) -> list[T]:  # fmt: skip
    """Request i is due at its Poisson arrival time whatever the server does; with
    ``max_concurrency`` a due request waits for a free slot (arrivals stay on schedule)."""
    slots = asyncio.Semaphore(max_concurrency) if max_concurrency else None

    async def guarded(i: int) -> T:
        if slots is None:
            return await do(i)
        async with slots:
            return await do(i)

    tasks = []
    start = time.perf_counter()
    for i, due in enumerate(arrival_times(n, rate, rng)):
        if (delay := start + due - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(guarded(i)))
    return list(await asyncio.gather(*tasks))
