"""What the HTTP side needs from whatever runs the requests, and from whatever says it is ready.

Two implementations: the disaggregated ``Orchestrator`` (with ``Workers`` for readiness) and the
``ColocatedBackend`` (the whole model in this process; it reports its own readiness).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Protocol

from router.jobs import Job
from router.metrics import RouterMetrics


class Backend(Protocol):
    """Owns a background thread; every method but ``start``/``stop`` is called from the event loop
    and must not block for long. Events reach the HTTP side only through each job's ``sink``."""

    metrics: RouterMetrics
    thread: threading.Thread
    reply_to: str  # the ZMQ inbox workers answer to; empty when there is none

    def start(self) -> None: ...

    def submit(self, job: Job) -> None:
        """Queue a job or raise ``Overloaded``; its first event (token or error) comes later."""
        ...

    def abort(self, rid: str, reason: str) -> None: ...

    def snapshot(self) -> Future:
        """A future of the ``/debug/requests`` dict, answered by the backend's thread."""
        ...

    def stop(self) -> None: ...


class Readiness(Protocol):
    def ready(self, now: float) -> dict[str, bool]:
        """Stage name -> ready; the server is ready when all are."""
        ...
