"""The operator's routes, outside ``/v1/`` (no API key, not counted): ``GET /health`` (200 when
every stage has a ready worker and the backend's thread runs, else 503 with the stages: for
readiness), ``GET /livez`` (200 while the backend's thread runs, workers or not: for liveness),
``GET /metrics`` (Prometheus text) and ``GET /debug/requests`` (the backend's live requests).
"""

from __future__ import annotations

import asyncio
import queue

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import generate_latest

from router.api.deps import BackendDep, ReadinessDep
from router.protocol import overloaded
from router.workers import monotonic

DEBUG_TIMEOUT_S = 5.0  # /debug/requests waits this long for the backend thread

router = APIRouter()


@router.get("/health")
async def health(workers: ReadinessDep, backend: BackendDep) -> JSONResponse:
    stages = workers.ready(monotonic())
    ok = all(stages.values()) and backend.thread.is_alive()
    return JSONResponse({"ready": ok, "stages": stages}, status_code=200 if ok else 503)


@router.get("/livez")
async def livez(backend: BackendDep) -> JSONResponse:
    ok = backend.thread.is_alive()
    return JSONResponse({"live": ok}, status_code=200 if ok else 503)


@router.get("/metrics")
async def prometheus(backend: BackendDep) -> PlainTextResponse:
    text = generate_latest(backend.metrics.registry).decode()
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


@router.get("/debug/requests")
async def debug(backend: BackendDep) -> dict:
    try:  # the backend thread answers between two turns; a wedged one must not hang the probe
        return await asyncio.wait_for(asyncio.wrap_future(backend.snapshot()), DEBUG_TIMEOUT_S)
    except (TimeoutError, queue.Full):
        raise overloaded("the serving loop did not answer in time") from None
