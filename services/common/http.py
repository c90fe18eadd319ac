"""The workers' HTTP side: ``/health`` (liveness), ``/ready`` (readiness), ``/metrics`` (Prometheus).

Liveness answers 200 while the serving loop keeps turning (a loop stuck longer than ``stall_s``
answers 503); readiness answers 200 once the model is loaded and the sockets are bound. Both
return a small JSON body with what the loop publishes in ``Health.info``. The app is FastAPI
served by uvicorn on a daemon thread with its own event loop; it only reads state the loop
publishes and never touches the model or the sockets.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

START_TIMEOUT_S = 30.0


class Health:
    """State the serving loop publishes for the HTTP thread."""

    def __init__(self, stall_s: float = 300.0) -> None:
        self.stall_s = stall_s
        self.ready = False
        self.last_tick = time.monotonic()
        self.info: dict[str, Any] = {}
        self.port = 0  # the HTTP server's, once bound

    def url(self, host: str) -> str:
        """This server as others reach it at ``host`` ("" before it is bound)."""
        return f"http://{host}:{self.port}" if self.port else ""

    def tick(self) -> None:
        self.last_tick = time.monotonic()

    def live(self) -> bool:
        return time.monotonic() - self.last_tick < self.stall_s


def health_app(registry: CollectorRegistry, health: Health) -> FastAPI:
    app = FastAPI(title="epd worker", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health")
    @app.get("/healthz")
    @app.get("/livez")
    def live() -> JSONResponse:
        ok = health.live()
        return JSONResponse({"live": ok, **health.info}, status_code=200 if ok else 503)

    @app.get("/ready")
    @app.get("/readyz")
    def ready() -> JSONResponse:
        return JSONResponse({"ready": health.ready, **health.info}, status_code=200 if health.ready else 503)

    return app


class HealthServer:
    """``health_app`` on ``host:port`` (0: a free port, then ``port`` tells which) in a daemon thread."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, health: Health) -> None:
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.port: int = self.sock.getsockname()[1]
        config = uvicorn.Config(
            health_app(registry, health), log_config=None, access_log=False, lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, name="health-http", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.server.started:
            raise RuntimeError(f"the health server on {host}:{port} did not start")

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self.sock]))

    def shutdown(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()
