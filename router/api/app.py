"""The router's HTTP side assembled: one FastAPI app from the route modules, the middleware and
the error handlers of this package.

Owns: the app's shared objects (``app.state``: the config, the readiness source, the backend, the
preparer, and the image-fetching HTTP client, which lives as long as the app) and the lifespan
that starts and stops the backend's thread and the health poller. It owns no socket and no
model: the backend's thread does (``Orchestrator``, or ``ColocatedBackend`` with
``--colocated``; see ``router/backend.py``).

Request life cycle: request id and API key (``middleware``; 401) -> validate (pydantic, 400) ->
prepare (model, images, template, context; 400) -> ``Generation.start`` (submit; waits for the
first token, so overload and stage failures before it are a 503 / 4xx, not a broken stream) ->
stream SSE chunks or collect one response (``chat``, ``completions``). Every failure becomes the
OpenAI error JSON (``errors``). A client that disconnects (the stream is cancelled, or
``collect``'s poll sees it) or a stop string closes the generation, which aborts the request in
every service.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from router.api import chat, completions, models, ops
from router.api.errors import HANDLERS
from router.api.middleware import IdsAndAuth
from router.backend import Backend, Readiness
from router.config import RouterConfig
from router.prepare import Preparer
from router.workers import HealthPoller, Workers


def create_app(cfg: RouterConfig, workers: Readiness, backend: Backend, preparer: Preparer) -> FastAPI:
    app = FastAPI(title="epd router", lifespan=_lifespan, exception_handlers=HANDLERS)
    app.state.cfg, app.state.workers, app.state.backend, app.state.preparer = cfg, workers, backend, preparer
    app.add_middleware(IdsAndAuth)
    for module in (chat, completions, models, ops):
        app.include_router(module.router)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state = app.state
    # colocated: the backend reports its own readiness, there are no workers to poll
    poller = HealthPoller(state.workers) if isinstance(state.workers, Workers) else None
    if poller is not None:
        poller.start()
    state.backend.start()
    state.http = httpx.AsyncClient(timeout=state.cfg.fetch_timeout_s, follow_redirects=False)
    try:
        yield
    finally:
        if poller is not None:
            poller.stop.set()
        state.backend.stop()
        await state.http.aclose()
