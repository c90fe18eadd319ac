"""One request's timeline at the router (``shared.timeline``): the router's own stamps, the
workers' as they come back with tokens, and at the end the critical path, the per-stage
histogram, the trace's root span and the ``timeline`` field of the response.

The request's clock starts when the middleware saw the request (``request.state.clock``); the
router stamps ``preprocess`` (up to submit) and ``admission`` (submit to dispatch), and hands
``trace()`` to every worker it sends the request to.
"""

from __future__ import annotations

import re
import time
from typing import Any

from router.metrics import RouterMetrics
from shared.timeline import RequestClock, Service, StageName, Timeline, Tracer, observe
from shared.wire.messages import StageStamp, TraceContext
from shared.wire.messages.common import TRACEPARENT


class RequestTiming:
    def __init__(
        self, clock: RequestClock, tracer: Tracer, name: str, client_traceparent: str = "",
        colocated: bool = False,
    ) -> None:  # fmt: skip
        self.clock = clock
        self.timeline = Timeline(clock.anchor, colocated)
        self.root = tracer.open_root(name, clock.anchor, _valid(client_traceparent))
        self.own: list[StageStamp] = []  # the router's stamps (exported with the root)

    @classmethod
    def untraced(cls) -> RequestTiming:
        """For a job built outside an HTTP request (tests, tools): its clock starts now."""
        return cls(RequestClock.here(), Tracer(Service.ROUTER), "request")

    @property
    def traceparent(self) -> str:
        return self.root.traceparent if self.root is not None else ""

    def stamp(self, stage: StageName, start: float, end: float | None = None) -> None:
        """A router stage from monotonic ``start`` to ``end`` (now)."""
        s = self.clock.stamp(stage, start, end)
        self.own.append(s)
        self.timeline.add([s])

    def add(self, stamps: list[StageStamp]) -> None:
        """Stamps from a worker (the backend's thread)."""
        if stamps:
            self.timeline.add(stamps)

    def trace(self) -> TraceContext:
        """What a message that hands the request to a worker carries."""
        return TraceContext(self.traceparent, self.clock.now())

    def finish(self, metrics: RouterMetrics, request_id: str) -> dict[str, Any]:
        """The request ended now: observe every stage and the gaps, close the trace; the report."""
        end = self.clock.at(time.monotonic())
        path = self.timeline.finish(end)
        gaps = [StageStamp(StageName.GAP.value, g.start, g.duration) for g in path if g.stamp < 0]
        observe(metrics.stage_latency, [*self.timeline.stamps, *gaps])
        if self.root is not None:
            self.root.close(end, [*self.own, *gaps], request_id, **{"epd.request_id": request_id})
        return self.timeline.report()


def _valid(traceparent: str) -> str:
    """A client's ``traceparent`` header, or "" when it is not a W3C trace context."""
    tp = traceparent.strip().lower()
    return tp if re.fullmatch(TRACEPARENT, tp) else ""
