"""What the router knows about each worker: addresses, health, load; and how it picks workers.

Encoders and prefill workers are configured (``router.config``); their readiness comes from
polling their HTTP ``/ready`` (``HealthPoller``, a daemon thread that only flips booleans).
Decode workers are discovered from their ``LoadReport``s, which double as heartbeats.
Load counts (``inflight``) are kept by the orchestrator thread, the only writer.

Selection: prefill and decode by least load; images to encoders cache-aware: an image whose hash
an encoder was last given goes to that encoder again (its cache holds the embeddings), new images
go to the least-loaded encoder, so a multi-image request is spread over encoders.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections import OrderedDict
from dataclasses import dataclass, field

from shared.wire.messages import LoadReport


@dataclass
class Encoder:
    zmq: str
    http: str = ""
    ready: bool = False
    inflight: int = 0  # images sent, request not yet past prefill


@dataclass
class Prefill:
    zmq: str
    inbox: str
    http: str = ""
    ready: bool = False
    inflight: int = 0  # requests sent, first token not yet back


@dataclass
class Decode:
    kv: str
    control: str
    heard: float = 0.0  # monotonic time of the last LoadReport
    report: LoadReport | None = None
    inflight: int = 0  # this router's requests assigned to it, not finished
    picked: float = 0.0  # last time it was picked: ties go to the least recently picked

    def load(self) -> int:
        reported = self.report.running + self.report.queued if self.report else 0
        return max(self.inflight, reported)


@dataclass
class Workers:
    encoders: list[Encoder]
    prefills: list[Prefill]
    heartbeat_timeout_s: float
    decodes: dict[str, Decode] = field(default_factory=dict)  # by KV address
    image_home: OrderedDict[str, str] = field(default_factory=OrderedDict)  # hash -> encoder zmq
    max_homes: int = 100_000

    def heard(self, report: LoadReport, now: float) -> None:
        d = self.decodes.get(report.kv_address)
        if d is None:
            d = self.decodes[report.kv_address] = Decode(report.kv_address, report.control_address)
        d.heard, d.report, d.control = now, report, report.control_address

    def live_decodes(self, now: float) -> list[Decode]:
        return [d for d in self.decodes.values() if now - d.heard <= self.heartbeat_timeout_s]

    def ready(self, now: float) -> dict[str, bool]:
        return {
            "encoder": any(e.ready for e in self.encoders),
            "prefill": any(p.ready for p in self.prefills),
            "decode": bool(self.live_decodes(now)),
        }

    def pick_prefill(self, exclude: set[str], max_per_worker: int) -> Prefill | None:
        ok = [p for p in self.prefills if p.ready and p.inflight < max_per_worker]
        preferred = [p for p in ok if p.zmq not in exclude] or ok
        return min(preferred, key=lambda p: p.inflight, default=None)

    def pick_decode(self, exclude: set[str], now: float) -> Decode | None:
        live = self.live_decodes(now)
        preferred = [d for d in live if d.kv not in exclude] or live
        free = lambda d: d.report.free_blocks if d.report else 0  # noqa: E731
        best = min(preferred, key=lambda d: (d.load(), -free(d), d.picked), default=None)
        if best is not None:
            best.picked = now
        return best

    def assign_images(self, hashes: list[str]) -> dict[str, list[int]]:
        """Image indexes per encoder address (cache-aware, then least loaded)."""
        ready = {e.zmq: e for e in self.encoders if e.ready} or {e.zmq: e for e in self.encoders}
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
    """Polls each encoder's and prefill worker's ``/ready`` every ``interval_s``."""

    def __init__(self, workers: Workers, interval_s: float = 1.0) -> None:
        super().__init__(name="health-poller", daemon=True)
        self.workers, self.interval_s = workers, interval_s
        self.stop = threading.Event()

    def run(self) -> None:
        while True:
            polled: list[Encoder | Prefill] = [*self.workers.encoders, *self.workers.prefills]
            for w in polled:
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
