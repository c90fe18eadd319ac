"""What the HTTP side needs from whatever runs the requests, and from whatever says it is ready.

Two implementations: the disaggregated ``Orchestrator`` (with ``Workers`` for readiness) and the
``ColocatedBackend`` (the whole model in this process; it reports its own readiness).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

from router.jobs import Job
from router.metrics import RouterMetrics
from shared.timeline import Service, Tracer


class Overloaded(Exception):
    """No admission slot or the command queue is full."""


# ----- commands: the HTTP side -> the backend's thread ---------------------------------------------
@dataclass(frozen=True)
class Submit:
    """Run ``job``; it holds an admission slot, which the thread releases when the job ends."""

    job: Job


@dataclass(frozen=True)
class Abort:
    """Stop request ``rid`` wherever it is (client gone, stop string); unknown ids are ignored."""

    rid: str
    reason: str


@dataclass(frozen=True)
class Snapshot:
    """Answer ``future`` with the ``/debug/requests`` dict."""

    future: Future


Command = Submit | Abort | Snapshot


class Backend:
    """What the HTTP side calls, the same for both implementations: admission slots
    (``max_inflight``), a bounded queue of ``Command``s (``Submit``, ``Abort``, ``Snapshot``) and the
    one background thread (``_run``) that owns everything else. Every method but ``start``/``stop``
    is called from the event loop and does not block for long; events reach the HTTP side only
    through each job's ``sink``. A subclass's thread drains ``commands`` (a ``match`` on the
    command) and releases a job's slot when the job ends."""

    reply_to = ""  # the ZMQ inbox workers answer to; empty when there is none
    colocated = False  # whether the model's stages run in this process (names the stages' owner)
    tracer = Tracer(Service.ROUTER)  # no tracing unless the entry point sets one

    def __init__(self, metrics: RouterMetrics, max_inflight: int, thread_name: str) -> None:
        self.metrics = metrics
        self.slots = threading.BoundedSemaphore(max_inflight)
        self.commands: queue.Queue[Command] = queue.Queue(maxsize=2 * max_inflight)
        self.stopping, self.started = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run, name=thread_name, daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        self.thread.start()
        if not self.started.wait(timeout):
            raise RuntimeError(f"the {self.thread.name} thread did not start")

    def submit(self, job: Job) -> None:
        """Queue a job or raise ``Overloaded``; its first event (token or error) comes later."""
        if not self.slots.acquire(blocking=False):
            raise Overloaded("too many requests in flight")
        try:
            self.commands.put_nowait(Submit(job))
        except queue.Full:
            self.slots.release()
            raise Overloaded("the router's queue is full") from None
        self._wake()

    def abort(self, rid: str, reason: str) -> None:
        with contextlib.suppress(queue.Full):  # the deadline frees it if the queue is jammed
            self.commands.put(Abort(rid, reason), timeout=1.0)
            self._wake()

    def snapshot(self) -> Future:
        """A future of the ``/debug/requests`` dict, answered by the backend's thread."""
        fut: Future = Future()
        self.commands.put(Snapshot(fut), timeout=1.0)
        self._wake()
        return fut

    def stop(self) -> None:
        self.stopping.set()
        self._wake()
        self.thread.join(5.0)
        self.tracer.shutdown()

    def _wake(self) -> None:
        """A command was queued (or ``stop`` called): a thread that waits on more than the queue
        is told here; one that blocks on the queue needs nothing."""

    def _run(self) -> None:
        raise NotImplementedError


class Readiness(Protocol):
    def ready(self, now: float) -> dict[str, bool]:
        """Stage name -> ready; the server is ready when all are."""
        ...
