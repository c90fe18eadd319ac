"""The request middleware (``router.api.middleware``) on a bare app: request ids, the API key
check, the request counter, and streamed responses passing through untouched."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.testclient import TestClient

from router.api.errors import HANDLERS
from router.api.middleware import IdsAndAuth, request_id
from router.metrics import RouterMetrics

pytestmark = pytest.mark.unit


def make_app(keys: frozenset[str] = frozenset()) -> FastAPI:
    app = FastAPI(exception_handlers=HANDLERS)
    app.state.cfg = SimpleNamespace(keys=keys)
    app.state.backend = SimpleNamespace(metrics=RouterMetrics())
    app.add_middleware(IdsAndAuth)

    @app.get("/v1/echo")
    async def echo(request: Request) -> JSONResponse:
        s = request.state
        return JSONResponse({"rid": s.rid, "var": request_id.get(), "clock": s.clock is not None})

    @app.get("/v1/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f"data: {i}\n\n".encode()

        return StreamingResponse(chunks(), media_type="text/event-stream", headers={"X-Request-Id": "x"})

    @app.get("/health")
    async def health() -> dict:
        return {"ok": True}

    return app


def count(app: FastAPI, route: str, status: str) -> float:
    return app.state.backend.metrics.requests.labels(route, status)._value.get()


def test_request_ids_echo_the_clients_and_extend_it() -> None:
    app = make_app()
    with TestClient(app) as c:
        r = c.get("/v1/echo", headers={"X-Request-Id": "trace-7"})
        again = c.get("/v1/echo", headers={"X-Request-Id": "trace-7"})
        mine = c.get("/v1/echo")
        bad = c.get("/v1/echo", headers={"X-Request-Id": "no spaces allowed"})
    body = r.json()
    assert r.headers["x-request-id"] == "trace-7"
    assert re.fullmatch(r"trace-7\.[0-9a-f]{12}", body["rid"])
    assert body["var"] == body["rid"] and body["clock"]  # the log lines' contextvar; the clock started
    assert again.json()["rid"] != body["rid"]  # a reused client id still makes a new request id
    assert mine.headers["x-request-id"] == mine.json()["rid"] and "." not in mine.json()["rid"]
    assert bad.headers["x-request-id"] == bad.json()["rid"] != "no spaces allowed"
    assert count(app, "/v1/echo", "200") == 4


def test_api_keys_guard_v1_routes_only() -> None:
    app = make_app(frozenset({"k1"}))
    with TestClient(app) as c:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "k1"}):
            r = c.get("/v1/echo", headers={**headers, "X-Request-Id": "t1"})
            assert r.status_code == 401 and r.headers["x-request-id"] == "t1"
            assert r.json() == {
                "error": {
                    "message": "invalid API key", "type": "authentication_error", "param": None,
                    "code": "invalid_api_key",
                }
            }  # fmt: skip
        assert c.get("/v1/echo", headers={"Authorization": "Bearer  k1 "}).status_code == 200
        assert c.get("/health").status_code == 200  # probes need no key
    assert count(app, "/v1/echo", "401") == 3 and count(app, "/v1/echo", "200") == 1
    assert app.state.backend.metrics.errors.labels("invalid_api_key")._value.get() == 3
    assert count(app, "/health", "200") == 0  # probes are not counted


def test_streams_pass_through_with_one_request_id_header(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app()
    with caplog.at_level(logging.INFO, "router"), TestClient(app) as c:
        r = c.get("/v1/stream", headers={"X-Request-Id": "s1"})
    assert r.content == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert r.headers.get_list("x-request-id") == ["s1"]  # the route's own header is replaced
    assert count(app, "/v1/stream", "200") == 1
    assert "GET /v1/stream -> 200" in caplog.text


def test_unknown_v1_routes_are_counted_by_status() -> None:
    app = make_app()
    with TestClient(app) as c:
        r = c.get("/v1/nothing")
    assert r.status_code == 404 and r.headers["x-request-id"]
    assert count(app, "/v1/nothing", "404") == 1
