"""What happens to every request before its route: its id, the API key check, the access log line
and the request counter.

The request's clock (``shared.timeline``) starts here. The id is new, prefixed by the client's
``X-Request-Id`` when it is well formed (which is echoed in the response): unique in the cluster
even when clients reuse theirs, across routers too. It is kept on ``request.state.rid`` (the
routes build the OpenAI ids from it) and set in the ``request_id`` contextvar, which ``RequestIdFilter`` (installed by ``router/__main__.py``)
puts on every log line written while the request runs. With ``--api-keys``, ``/v1/`` routes need
``Authorization: Bearer <key>`` (else 401). Only ``/v1/`` routes are counted in
``router_requests`` (by path and status) and logged; the probes are not.
"""

from __future__ import annotations

import contextvars
import logging
import re

from fastapi import Request
from fastapi.responses import Response
from starlette.middleware.base import RequestResponseEndpoint

from router.api.deps import metrics
from router.api.errors import error_response
from router.generate import new_id
from router.protocol import APIError
from shared.timeline import RequestClock

log = logging.getLogger("router")
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_ID = re.compile(r"[A-Za-z0-9._:-]{1,100}")


class RequestIdFilter(logging.Filter):
    """Sets ``record.request_id``: the one a caller passed in ``extra``, else the current request's."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = getattr(record, "request_id", None) or request_id.get()
        return True


async def ids_and_auth(request: Request, call_next: RequestResponseEndpoint) -> Response:
    request.state.clock = RequestClock.here()  # the request's clock starts now (shared.timeline)
    given = request.headers.get("x-request-id", "")
    given = given if _ID.fullmatch(given) else ""
    # the id requests go by in the cluster is unique even when clients reuse theirs, through
    # this router or another one sharing the workers; the client's is echoed and is its prefix
    rid = f"{given}.{new_id()[:12]}" if given else new_id()
    request_id.set(rid)
    request.state.rid = rid
    route = request.url.path
    keys = request.app.state.cfg.keys
    if keys and route.startswith("/v1/") and not _authorized(request, keys):
        resp: Response = error_response(
            request, APIError(401, "invalid API key", type="authentication_error", code="invalid_api_key")
        )
        resp.headers["X-Request-Id"] = given or rid
        metrics(request).requests.labels(route, "401").inc()
        return resp
    resp = await call_next(request)
    resp.headers["X-Request-Id"] = given or rid
    if route.startswith("/v1/"):
        metrics(request).requests.labels(route, str(resp.status_code)).inc()
        log.info("%s %s -> %d", request.method, route, resp.status_code)
    return resp


def _authorized(request: Request, keys: frozenset[str]) -> bool:
    auth = request.headers.get("authorization", "")
    return auth.startswith("Bearer ") and auth[7:].strip() in keys
