"""Stage stamps on one clock per service, placed on the request's clock.

Each request has one reference clock: the router's wall clock (``time.time()``) when the request
arrived. A message that starts work on a request elsewhere carries ``TraceContext.clock``: the
sender's reading of the request's clock at send. The receiver pins that reading to its own
``time.monotonic()`` at receipt and places every later moment of the request by monotonic
difference, so a stamp's start is on the request's clock and its duration on the stamping
service's monotonic clock: a machine whose wall clock is off by minutes stamps correct times and
order. The transit of the message is not known; it shows up, uncounted, in the router's gaps (a
receiver's times are never later than the router's clock would read them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from shared.timeline.stages import StageName
from shared.wire.messages import StageStamp, TraceContext


@dataclass
class RequestClock:
    """The request's clock as seen from this process: ``at(mono)`` maps a ``time.monotonic()``
    reading to the request's clock."""

    anchor: float  # the request's clock at ``mono``
    mono: float = field(default_factory=time.monotonic)

    @classmethod
    def here(cls) -> RequestClock:
        """A request that starts in this process: its clock is this machine's wall clock."""
        return cls(time.time(), time.monotonic())

    @classmethod
    def received(cls, trace: TraceContext | None) -> RequestClock:
        """Pinned at receipt of a message carrying ``trace``; without one (a client that is not the
        router), this machine's wall clock."""
        return cls.here() if trace is None else cls(trace.clock, time.monotonic())

    def at(self, mono: float) -> float:
        return self.anchor + (mono - self.mono)

    def now(self) -> float:
        return self.at(time.monotonic())

    def local_deadline(self, deadline: float) -> float:
        """A deadline on the request's clock as this machine's ``time.time()`` reads it."""
        return deadline - self.now() + time.time()

    def stamp(self, stage: StageName, start: float, end: float | None = None) -> StageStamp:
        """``stage`` from monotonic ``start`` to ``end`` (now if None)."""
        end = time.monotonic() if end is None else end
        return StageStamp(stage.value, self.at(start), max(0.0, end - start))

    def trace(self, traceparent: str) -> TraceContext:
        """What to put in a message that hands the request on."""
        return TraceContext(traceparent, self.now())
