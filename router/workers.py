"""What the router knows about each worker: addresses, membership, health, load; and how it picks.

Membership. A worker is configured (``--encoders`` / ``--prefills``: *static*, its readiness
polled over HTTP ``/ready`` by ``HealthPoller``, a daemon thread that only flips booleans) or
learned: every worker started with ``--report-to`` this router sends ``LoadReport``s, and the first
one registers it (``heard``). Reports are heartbeats: a worker that has reported and then stays
silent for ``heartbeat_timeout_s`` is gone (``expire`` forgets the learned ones), as is one whose
report says ``leaving``; one that says ``draining`` is sent nothing new while what it holds
finishes. Load counts (``inflight``) are kept by the orchestrator thread, the only writer of
everything here but the static workers' ``ready``.

Selection: prefill and decode by least load; images to encoders cache-aware: an image whose hash
an encoder was last given goes to that encoder again (its cache holds the embeddings), new images
go to the least-loaded encoder, so a multi-image request is spread over encoders.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from shared.wire.messages import LoadReport, Stage, WorkerState

log = logging.getLogger("router.workers")


@dataclass(kw_only=True)
class Member:
    static: bool = False  # configured by flag; else learned from its reports
    ready: bool = False  # static: its /ready answers; learned: it has reported
    state: WorkerState = WorkerState.SERVING
    heard: float | None = None  # monotonic time of its last LoadReport (None: never reported)
    report: LoadReport | None = None
    inflight: int = 0  # this router's work on it, counted by the orchestrator

    def alive(self, now: float, timeout: float) -> bool:
        """Up: holds and answers what it was given (draining included)."""
        if self.state is WorkerState.LEAVING or (self.heard is not None and now - self.heard > timeout):
            return False
        return self.ready

    def usable(self, now: float, timeout: float) -> bool:
        """Takes new work."""
        return self.alive(now, timeout) and self.state is WorkerState.SERVING


@dataclass
class Encoder(Member):
    zmq: str
    http: str = ""


@dataclass
class Prefill(Member):
    zmq: str
    inbox: str
    http: str = ""


@dataclass
class Decode(Member):
    kv: str
    control: str
    picked: float = 0.0  # last time it was picked: ties go to the least recently picked

    def load(self) -> int:
        reported = self.report.running + self.report.queued if self.report else 0
        return max(self.inflight, reported)


@dataclass
class Workers:
    encoders: dict[str, Encoder]  # by ZMQ address
    prefills: dict[str, Prefill]
    heartbeat_timeout_s: float
    decodes: dict[str, Decode] = field(default_factory=dict)  # by KV address
    image_home: OrderedDict[str, str] = field(default_factory=OrderedDict)  # hash -> encoder zmq
    max_homes: int = 100_000

    @classmethod
    def configured(
        cls, encoders: list[Encoder], prefills: list[Prefill], heartbeat_timeout_s: float
    ) -> Workers:
        for w in (*encoders, *prefills):
            w.static = True
        return cls({e.zmq: e for e in encoders}, {p.zmq: p for p in prefills}, heartbeat_timeout_s)

    # ----- membership -----------------------------------------------------------------------------
    def heard(self, report: LoadReport, now: float) -> Member:
        """A worker's report: registers it (first report), refreshes its heartbeat, state and load."""
        w: Member | None
        if report.kind is Stage.ENCODER:
            w = self.encoders.get(report.address)
            if w is None:
                w = self.encoders[report.address] = Encoder(zmq=report.address, http=report.http)
        elif report.kind is Stage.PREFILL:
            w = self.prefills.get(report.address)
            if w is None:
                w = self.prefills[report.address] = Prefill(
                    zmq=report.address, inbox=report.inbox, http=report.http
                )
        else:
            w = self.decodes.get(report.address)
            if w is None:
                w = self.decodes[report.address] = Decode(kv=report.address, control=report.inbox)
            w.control = report.inbox
        if w.heard is None:
            log.info("%s %s joined (%s)", report.kind.value, report.address, report.source)
        elif w.state is not report.state:
            log.info("%s %s is %s", report.kind.value, report.address, report.state.value)
        w.heard, w.report, w.state = now, report, report.state
        if not w.static:
            w.ready = True
        return w

    def knows(self, report: LoadReport) -> bool:
        pools: dict[Stage, dict[str, Any]] = {Stage.ENCODER: self.encoders, Stage.PREFILL: self.prefills}
        return report.address in pools.get(report.kind, self.decodes)

    def expire(self, now: float, busy: set[str]) -> list[str]:
        """Forget learned workers that are gone (silent or leaving) and hold none of this router's
        work (addresses in ``busy``); returns the forgotten addresses."""
        gone = []
        for pool in (self.encoders, self.prefills, self.decodes):
            for address, w in list(pool.items()):
                if not w.static and address not in busy and not w.alive(now, self.heartbeat_timeout_s):
                    del pool[address]
                    gone.append(address)
                    log.info(
                        "worker %s removed (%s)",
                        address,
                        "left" if w.state is WorkerState.LEAVING else "silent",
                    )
        return gone

    def alive(self, w: Member, now: float) -> bool:
        return w.alive(now, self.heartbeat_timeout_s)

    def ready(self, now: float) -> dict[str, bool]:
        t = self.heartbeat_timeout_s
        return {
            "encoder": any(e.usable(now, t) for e in list(self.encoders.values())),
            "prefill": any(p.usable(now, t) for p in list(self.prefills.values())),
            "decode": any(d.usable(now, t) for d in list(self.decodes.values())),
        }

    # ----- selection ------------------------------------------------------------------------------
    def pick_prefill(self, exclude: set[str], max_per_worker: int, now: float) -> Prefill | None:
        t = self.heartbeat_timeout_s
        ok = [p for p in self.prefills.values() if p.usable(now, t) and p.inflight < max_per_worker]
        preferred = [p for p in ok if p.zmq not in exclude] or ok
        return min(preferred, key=lambda p: p.inflight, default=None)

    def pick_decode(self, exclude: set[str], now: float) -> Decode | None:
        usable = [d for d in self.decodes.values() if d.usable(now, self.heartbeat_timeout_s)]
        preferred = [d for d in usable if d.kv not in exclude] or usable
        free = lambda d: d.report.free_blocks if d.report else 0  # noqa: E731
        best = min(preferred, key=lambda d: (d.load(), -free(d), d.picked), default=None)
        if best is not None:
            best.picked = now
        return best

    def assign_images(self, hashes: list[str], now: float) -> dict[str, list[int]]:
        """Image indexes per encoder address (cache-aware, then least loaded); {} when no encoder
        takes work."""
        t = self.heartbeat_timeout_s
        ready = {z: e for z, e in self.encoders.items() if e.usable(now, t)}
        if not ready:
            return {}
        planned = {z: e.inflight for z, e in ready.items()}
        out: dict[str, list[int]] = {}
        for i, h in enumerate(hashes):
            home = self.image_home.get(h)
            z = home if home in ready else min(planned, key=lambda a: planned[a])
            planned[z] += 1
            out.setdefault(z, []).append(i)
            self.image_home[h] = z
            self.image_home.move_to_end(h)
        while len(self.image_home) > self.max_homes:
            self.image_home.popitem(last=False)
        return out


class HealthPoller(threading.Thread):
    """Polls each static encoder's and prefill worker's ``/ready`` every ``interval_s``."""

    def __init__(self, workers: Workers, interval_s: float = 1.0) -> None:
        super().__init__(name="health-poller", daemon=True)
        self.workers, self.interval_s = workers, interval_s
        self.stop = threading.Event()

    def run(self) -> None:
        while True:
            polled: list[Encoder | Prefill] = [
                *list(self.workers.encoders.values()),
                *list(self.workers.prefills.values()),
            ]
            for w in polled:
                if w.static:
                    w.ready = _ready(w.http)
            if self.stop.wait(self.interval_s):
                return


def _ready(http: str) -> bool:
    if not http:
        return True  # no health endpoint given: trust the configuration
    try:
        with urllib.request.urlopen(http.rstrip("/") + "/ready", timeout=2.0) as resp:
            return resp.status == 200
    except OSError:
        return False


def monotonic() -> float:
    return time.monotonic()
