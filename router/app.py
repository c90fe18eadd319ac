"""The router's HTTP side: the OpenAI-compatible API on FastAPI.

Owns: routes (``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``, ``/health``,
``/metrics``, ``/debug/requests``), authentication (optional Bearer keys), request ids (the
client's ``X-Request-Id`` or a new one, echoed in every response and set on every log line), and
the OpenAI error JSON for every failure. It owns no socket and no model: the backend's thread
does (``Orchestrator``, or ``ColocatedBackend`` with ``--colocated``; see ``backend.py``).

Request life cycle: validate (pydantic, 400) -> prepare (model, images, template, context; 400)
-> ``Generation.start`` (submit; waits for the first token, so overload and stage failures before
it are a 503 / 4xx, not a broken stream) -> stream SSE chunks or collect one response. A client
that disconnects (the stream is cancelled, or the poll below sees it) or a stop string closes the
generation, which aborts the request in every service.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import queue
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from router.backend import Backend, Readiness
from router.config import RouterConfig
from router.generate import Generation, new_id
from router.prepare import Preparer
from router.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    chat_chunk,
    chat_logprobs,
    chat_response,
    completion_body,
    completion_choice,
    legacy_logprobs,
    overloaded,
    usage,
)  # fmt: skip
from router.responses import collect, sse
from router.workers import HealthPoller, Workers, monotonic

log = logging.getLogger("router")
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_ID = re.compile(r"[A-Za-z0-9._:-]{1,100}")


DEBUG_TIMEOUT_S = 5.0  # /debug/requests waits this long for the backend thread


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = getattr(record, "request_id", None) or request_id.get()
        return True


def create_app(cfg: RouterConfig, workers: Readiness, orch: Backend, prep: Preparer) -> FastAPI:
    metrics = orch.metrics
    poller = HealthPoller(workers) if isinstance(workers, Workers) else None  # colocated: no workers

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if poller is not None:
            poller.start()
        orch.start()
        app.state.http = httpx.AsyncClient(timeout=cfg.fetch_timeout_s, follow_redirects=False)
        try:
            yield
        finally:
            if poller is not None:
                poller.stop.set()
            orch.stop()
            await app.state.http.aclose()

    app = FastAPI(title="epd router", lifespan=lifespan)

    @app.middleware("http")
    async def ids_and_auth(request: Request, call_next: Any) -> Response:
        given = request.headers.get("x-request-id", "")
        rid = given if _ID.fullmatch(given) else new_id()
        request_id.set(rid)
        request.state.rid = rid
        route = request.url.path
        if cfg.keys and route.startswith("/v1/"):
            auth = request.headers.get("authorization", "")
            if not auth.startswith("Bearer ") or auth[7:].strip() not in cfg.keys:
                resp: Response = _error(
                    APIError(401, "invalid API key", type="authentication_error", code="invalid_api_key")
                )
                resp.headers["X-Request-Id"] = rid
                metrics.requests.labels(route, "401").inc()
                return resp
        resp = await call_next(request)
        resp.headers["X-Request-Id"] = rid
        if route.startswith("/v1/"):
            metrics.requests.labels(route, str(resp.status_code)).inc()
            log.info("%s %s -> %d", request.method, route, resp.status_code)
        return resp

    def _error(e: APIError) -> JSONResponse:
        metrics.errors.labels(e.code or e.type).inc()
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        return _error(e)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        msg = (
            "invalid JSON body"
            if first.get("type") == "json_invalid"
            else first.get("msg", "invalid request")
        )
        return _error(
            APIError(
                400, f"{'.'.join(loc) or 'body'}: {msg}", param=".".join(loc) or None, code="invalid_value"
            )
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return _error(
            APIError(e.status_code, str(e.detail), type="invalid_request_error", code=str(e.status_code))
        )

    @app.exception_handler(Exception)
    async def crashed(request: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _error(APIError(500, f"internal error: {type(e).__name__}", type="internal_error"))

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(req: ChatCompletionRequest, request: Request) -> Response:
        prepared = await prep.chat(req, request.app.state.http)
        rid = "chatcmpl-" + request.state.rid
        gen = Generation(orch, prep.tokenizer, prepared, rid, cfg.request_timeout_s)
        await gen.start()
        n_prompt = len(prepared.prompt_ids)
        if not req.stream:
            text, finish, lps = await collect(gen, request)
            return JSONResponse(
                chat_response(
                    rid,
                    cfg.model_name,
                    text,
                    finish,
                    n_prompt,
                    gen.completion_tokens,
                    chat_logprobs(lps) if req.logprobs else None,
                )
            )
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def chunks(text: str | None, finish: str | None, lps: list) -> dict:
            delta = {} if text is None else {"content": text}
            return chat_chunk(
                rid, cfg.model_name, delta, finish, chat_logprobs(lps) if req.logprobs else None
            )

        first = chat_chunk(rid, cfg.model_name, {"role": "assistant", "content": ""})
        tail = chat_chunk(rid, cfg.model_name, None, usage_=usage(n_prompt, 0)) if include_usage else None
        return StreamingResponse(sse(gen, first, chunks, tail, n_prompt), media_type="text/event-stream")

    @app.post("/v1/completions", response_model=None)
    async def completions(req: CompletionRequest, request: Request) -> Response:
        prepared = await prep.completion(req)
        rid = "cmpl-" + request.state.rid
        gen = Generation(orch, prep.tokenizer, prepared, rid, cfg.request_timeout_s)
        await gen.start()
        n_prompt = len(prepared.prompt_ids)

        offset = 0

        def legacy(lps: list) -> dict | None:
            nonlocal offset
            if req.logprobs is None:
                return None
            out = legacy_logprobs(lps, offset)
            offset += sum(len(t.token) for t in lps)
            return out

        if not req.stream:
            text, finish, lps = await collect(gen, request)
            choice = completion_choice(text, finish, legacy(lps))
            return JSONResponse(
                completion_body(rid, cfg.model_name, choice, usage(n_prompt, gen.completion_tokens))
            )
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def chunks(text: str | None, finish: str | None, lps: list) -> dict:
            return completion_body(
                rid, cfg.model_name, completion_choice(text or "", finish, legacy(lps)), None, chunk=True
            )

        tail = (
            completion_body(rid, cfg.model_name, {}, usage(n_prompt, 0), chunk=True)
            if include_usage
            else None
        )
        return StreamingResponse(sse(gen, None, chunks, tail, n_prompt), media_type="text/event-stream")

    @app.get("/v1/models")
    async def models() -> dict:
        card = {
            "id": cfg.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "epd",
            "max_model_len": prep.max_model_len,
        }
        return {"object": "list", "data": [card]}

    @app.get("/health")
    async def health() -> JSONResponse:
        stages = workers.ready(monotonic())
        ok = all(stages.values()) and orch.thread.is_alive()
        return JSONResponse({"ready": ok, "stages": stages}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(
            generate_latest(metrics.registry).decode(), media_type="text/plain; version=0.0.4"
        )

    @app.get("/debug/requests")
    async def debug() -> dict:
        try:  # the backend thread answers between two turns; a wedged one must not hang the probe
            return await asyncio.wait_for(asyncio.wrap_future(orch.snapshot()), DEBUG_TIMEOUT_S)
        except (TimeoutError, queue.Full):
            raise overloaded("the serving loop did not answer in time") from None

    return app
