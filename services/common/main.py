"""The entry point the three worker services share: ``run_service(cfg, name, metrics, build)``.

Life cycle: logging and torch threads from the config; SIGTERM / SIGINT set a stop event; the
health and metrics HTTP server starts first (live, not ready, while the model loads); ``build``
loads the model and returns the serving loop and its bound endpoints; the ready file is written;
the loop serves until the stop event; then the sockets close, ZMQ waits for zero-copy sends still
in flight (exiting while ZMQ holds views of freed tensors would crash its I/O thread) and the HTTP
server stops.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, Protocol

import torch
import zmq

from services.common.http import Health, HealthServer
from shared.about import banner
from shared.ready import write_ready_file
from shared.runtime import SKEW_ENV, freeze_startup_heap, skew_wall_clock


class ServingLoop(Protocol):
    name: str

    def serve(self, stop: threading.Event) -> None: ...

    def close(self) -> None: ...


def run_service(
    cfg: Any, name: str, metrics: Any, build: Callable[[Health], tuple[ServingLoop, dict[str, str]]]
) -> int:
    """``build(health)`` -> (the serving loop, its endpoints by name for the ready file)."""
    skew = skew_wall_clock()
    logging.basicConfig(
        level=cfg.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    log = logging.getLogger(name)
    log.info("%s", banner(f"services.{name}"))  # where this code was loaded from
    if skew:
        log.warning("%s=%s: this process's wall clock is skewed by %+.1f s", SKEW_ENV, skew, skew)
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    health = Health()
    http = HealthServer(cfg.host, cfg.http_port, metrics.registry, health)  # live (not ready) while loading
    log.info("loading %s from %s (%s, %s)", name, cfg.model, cfg.device, cfg.dtype)
    server, endpoints = build(health)
    health.info = {"name": server.name, **endpoints, **health.info}
    freeze_startup_heap()
    write_ready_file(cfg.ready_file, {**endpoints, "http": f"http://{cfg.host}:{http.port}"})
    try:
        with torch.inference_mode():
            server.serve(stop)
    finally:
        health.ready = False
        server.close()
        zmq.Context.instance().term()
        http.shutdown()
        log.info("%s stopped", server.name)
    return 0
