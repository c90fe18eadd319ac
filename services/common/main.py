"""The entry point the three worker services share: ``run_service(cfg, name, metrics, build)``.

Life cycle: logging and torch threads from the config; the mesh security (``--curve-keys``:
CurveZMQ on every socket, before any is made); SIGINT sets a stop event, SIGTERM drains
(the server admits nothing new and reports ``draining``; once it holds nothing, or after
``--drain-timeout-s``, the stop event is set); the health and metrics HTTP server starts first
(live, not ready, while the model loads); ``build`` loads the model and returns the serving loop
and its bound endpoints; the ready file is written; the loop serves until the stop event; then
the server deregisters (its last load report says ``leaving``) and its sockets close, ZMQ waits for zero-copy sends still
in flight (exiting while ZMQ holds views of freed tensors would crash its I/O thread; the ZAP
handler stops first, as its sockets would hold the context open) and the HTTP server stops.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import torch
import zmq

from services.common.http import Health, HealthServer
from shared.about import banner
from shared.ready import write_ready_file
from shared.runtime import SKEW_ENV, freeze_startup_heap, skew_wall_clock
from shared.wire import security

DRAIN_QUIET_S = 2.0


class ServingLoop(Protocol):
    name: str

    def serve(self, stop: threading.Event) -> None: ...

    def drain(self) -> None:
        """Admit nothing new from now on (called from another thread)."""

    def idle(self) -> bool:
        """Nothing held: no request in flight (read from another thread)."""

    def close(self) -> None:
        """Deregister from the routers and close the sockets."""


def drain_then_stop(
    server: ServingLoop, draining: threading.Event, stop: threading.Event, timeout_s: float
) -> None:
    """Once ``draining`` is set: drain ``server``, and set ``stop`` once it has held nothing for
    ``DRAIN_QUIET_S`` (work that routers sent before they heard may still arrive) or after
    ``timeout_s`` (what is still held then is dropped; the routers fail it over)."""
    log = logging.getLogger("drain")
    while not draining.wait(0.2):
        if stop.is_set():
            return
    server.drain()
    now = time.monotonic()
    deadline, quiet_since = now + timeout_s, now
    while not stop.is_set():
        now = time.monotonic()
        if not server.idle():
            quiet_since = now
        elif now - quiet_since >= DRAIN_QUIET_S:
            log.info("%s drained: nothing in flight", server.name)
            break
        if now > deadline:
            log.warning(
                "%s: drain timeout (%.0f s) with requests in flight; stopping", server.name, timeout_s
            )
            break
        time.sleep(0.05)
    stop.set()


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
    try:
        security.configure(cfg.curve_keys)
    except security.MeshKeysError as e:
        log.error("--curve-keys: %s", e)
        return 2
    security.export_refusals(name, metrics.registry)
    stop, draining = threading.Event(), threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: draining.set() if not stop.is_set() else None)
    health = Health()
    http = HealthServer(cfg.host, cfg.http_port, metrics.registry, health)  # live (not ready) while loading
    health.port = http.port
    log.info("loading %s from %s (%s, %s)", name, cfg.model, cfg.device, cfg.dtype)
    server, endpoints = build(health)
    health.info = {"name": server.name, **endpoints, **health.info}
    freeze_startup_heap()
    write_ready_file(cfg.ready_file, {**endpoints, "http": f"http://{cfg.host}:{http.port}"})
    drainer = threading.Thread(
        target=drain_then_stop, args=(server, draining, stop, cfg.drain_timeout_s), name="drain", daemon=True
    )
    drainer.start()
    try:
        with torch.inference_mode():
            server.serve(stop)
    finally:
        health.ready = False
        server.close()
        security.shutdown()
        zmq.Context.instance().term()
        http.shutdown()
        log.info("%s stopped", server.name)
    return 0
