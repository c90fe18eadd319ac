"""What happens to every request before its route: its id, the API key check, the access log line
and the request counter.

The request's clock (``shared.timeline``) starts here. The id is new, prefixed by the client's
``X-Request-Id`` when it is well formed (which is echoed in the response): unique in the cluster
even when clients reuse theirs, across routers too. It is kept on ``request.state.rid`` (the
routes build the OpenAI ids from it) and set in the ``request_id`` contextvar, which
``RequestIdFilter`` (installed by ``router/__main__.py``) puts on every log line written while the
request runs. With ``--api-keys``, ``/v1/`` routes need ``Authorization: Bearer <key>`` (else
401). Only ``/v1/`` routes are counted in ``router_requests`` (by path and status) and logged, when
the response starts; the probes are not.

A plain ASGI middleware: it only wraps ``send`` to add the header to the response's start, so a
streamed response's chunks pass straight through (Starlette's ``BaseHTTPMiddleware`` ran the app
in a task of its own and relayed every chunk through a memory stream).
"""

from __future__ import annotations

import contextvars
import logging
import re

from fastapi import Request
from starlette.datastructures import URL
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router.api.errors import error_response
from router.generate import new_id
from router.protocol import APIError
from shared.timeline import RequestClock

log = logging.getLogger("router")
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_ID = re.compile(r"[A-Za-z0-9._:-]{1,100}")
_HEADER = b"x-request-id"


class RequestIdFilter(logging.Filter):
    """Sets ``record.request_id``: the one a caller passed in ``extra``, else the current request's."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = getattr(record, "request_id", None) or request_id.get()
        return True


class IdsAndAuth:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})  # what ``request.state`` reads
        state["clock"] = RequestClock.here()  # the request's clock starts now (shared.timeline)
        given = _header(scope, b"x-request-id")
        given = given if _ID.fullmatch(given) else ""
        # the id requests go by in the cluster is unique even when clients reuse theirs, through
        # this router or another one sharing the workers; the client's is echoed and is its prefix
        rid = f"{given}.{new_id()[:12]}" if given else new_id()
        request_id.set(rid)
        state["rid"] = rid
        echo = (given or rid).encode("latin-1")
        route = _route(scope)
        counted = route.startswith("/v1/")
        app_state = scope["app"].state
        keys = app_state.cfg.keys
        if keys and counted and not _authorized(_header(scope, b"authorization"), keys):
            resp = error_response(
                Request(scope, receive),
                APIError(401, "invalid API key", type="authentication_error", code="invalid_api_key"),
            )
            resp.headers["X-Request-Id"] = given or rid
            app_state.backend.metrics.requests.labels(route, "401").inc()
            await resp(scope, receive, send)
            return

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", ()) if h[0].lower() != _HEADER]
                headers.append((_HEADER, echo))
                message["headers"] = headers
                if counted:
                    status = message["status"]
                    app_state.backend.metrics.requests.labels(route, str(status)).inc()
                    log.info("%s %s -> %d", scope["method"], route, status)
            await send(message)

        await self.app(scope, receive, send_with_id)


def _header(scope: Scope, name: bytes) -> str:
    """The first value of a request header (ASGI names are lower case), or ""."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return ""


def _route(scope: Scope) -> str:
    """``request.url.path`` (the metrics' label), which is the raw path unless that has characters
    Starlette's URL escapes or drops."""
    path: str = scope["path"]
    if path[:1] != "/" or path.startswith("//") or any(c in path for c in "?#\\\t\r\n"):
        return URL(scope=scope).path
    return path


def _authorized(auth: str, keys: frozenset[str]) -> bool:
    return auth.startswith("Bearer ") and auth[7:].strip() in keys
