"""The serving loop the three worker services share: one ``step`` after another until told to stop.

A step receives (blocking at most ``IDLE_POLL_S`` when the service has nothing else to do, taking
at most ``MAX_RECV_PER_STEP`` messages), computes and sends. An exception in one step is counted
as an internal error and logged; the loop goes on, so one bad turn never takes a service down.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from shared.wire.messages import ErrorKind

IDLE_POLL_S = 0.05  # how long the receive stage blocks when nothing is queued
MAX_RECV_PER_STEP = 256  # messages admitted per loop turn before the rest of the turn runs


def serve_steps(step: Callable[[], None], stop: threading.Event, errors: Any, log: logging.Logger) -> None:
    """Run ``step`` until ``stop`` is set; ``errors`` is the service's errors-by-kind counter."""
    while not stop.is_set():
        try:
            step()
        except Exception:  # last resort: a bug in one turn must not take the service down
            errors.labels(ErrorKind.INTERNAL.value).inc()
            log.exception("unexpected error in the serving loop; continuing")
