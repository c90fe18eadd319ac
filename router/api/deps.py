"""The app's shared objects as FastAPI dependencies: a route names what it needs by annotation
(``cfg: ConfigDep``) and gets the object ``create_app`` (or the lifespan, for ``HttpDep``) put on
``app.state``; no module keeps a global, so two apps in one process do not share anything.
"""

from __future__ import annotations

from typing import Annotated

import httpx
from fastapi import Depends, Request

from router.backend import Backend, Readiness
from router.config import RouterConfig
from router.metrics import RouterMetrics
from router.prepare import Preparer


# async: a plain ``def`` dependency would cost a thread-pool hop per request
async def _cfg(request: Request) -> RouterConfig:
    return request.app.state.cfg


async def _workers(request: Request) -> Readiness:
    return request.app.state.workers


async def _backend(request: Request) -> Backend:
    return request.app.state.backend


async def _preparer(request: Request) -> Preparer:
    return request.app.state.preparer


async def _http(request: Request) -> httpx.AsyncClient:
    return request.app.state.http


def metrics(request: Request) -> RouterMetrics:
    """For the middleware and the error handlers, which take no dependencies."""
    return request.app.state.backend.metrics


ConfigDep = Annotated[RouterConfig, Depends(_cfg)]
ReadinessDep = Annotated[Readiness, Depends(_workers)]
BackendDep = Annotated[Backend, Depends(_backend)]
PreparerDep = Annotated[Preparer, Depends(_preparer)]
HttpDep = Annotated[httpx.AsyncClient, Depends(_http)]
