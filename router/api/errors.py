"""The OpenAI error JSON (``{"error": {"message", "type", "param", "code"}}``) for every failure.

Owns the exception handlers: ``APIError`` from any layer as it is; pydantic's validation errors as
a 400 naming the offending field (``param``); Starlette's HTTP errors (404, 405) with their
status; anything else as a 500, logged with its traceback. Every error answered, the middleware's
401 included, counts in ``router_errors`` by code (or type).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from router.api.deps import metrics
from router.protocol import APIError

log = logging.getLogger("router")


def error_response(request: Request, e: APIError) -> JSONResponse:
    metrics(request).errors.labels(e.code or e.type).inc()
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def _api_error(request: Request, e: APIError) -> JSONResponse:
    return error_response(request, e)


async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
    first = e.errors()[0] if e.errors() else {}
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    msg = "invalid JSON body" if first.get("type") == "json_invalid" else first.get("msg", "invalid request")
    where = ".".join(loc)
    return error_response(
        request, APIError(400, f"{where or 'body'}: {msg}", param=where or None, code="invalid_value")
    )


async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
    return error_response(
        request, APIError(e.status_code, str(e.detail), type="invalid_request_error", code=str(e.status_code))
    )


async def _crashed(request: Request, e: Exception) -> JSONResponse:
    log.exception("unhandled error")
    return error_response(
        request, APIError(500, f"internal error: {type(e).__name__}", type="internal_error")
    )


HANDLERS: dict[int | type[Exception], Callable[[Request, Any], Coroutine[Any, Any, Response]]] = {
    APIError: _api_error,
    RequestValidationError: _invalid,
    StarletteHTTPException: _http_error,
    Exception: _crashed,
}
