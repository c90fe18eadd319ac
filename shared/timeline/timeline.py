"""A request's timeline at the router: the stamps of every stage it crossed, the critical path
through them, and the gaps no stage accounts for.

The router's own stamps and those the workers send back (``SequenceTokens.stamps``) are all on the
request's clock (``clock.py``). ``critical_path`` walks back from the end of the request: at each
point it takes the non-waiting stage that ended last (a stage still running there counts as
ending there), back to where another stage running alongside it ended (the one it waited on) or
to its start; whatever lies between a stage's end and the point is a gap. The path's segments and
the gaps cover the request end to end, without overlap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.timeline.stages import STAGES, Service, StageName
from shared.wire.messages import StageStamp

_EPS = 1e-6


@dataclass(frozen=True)
class Segment:
    stage: str
    start: float
    end: float
    service: str
    stamp: int = -1  # index of the stamp it comes from in the list given; -1 for a gap

    @property
    def duration(self) -> float:
        return self.end - self.start


def owner(stage: str, colocated: bool = False) -> str:
    """The service that stamps ``stage`` (unknown names: "unknown")."""
    try:
        owners = STAGES[StageName(stage)].owners
    except ValueError:
        return "unknown"
    if colocated and Service.COLOCATED in owners:
        return Service.COLOCATED.value
    return owners[0].value


def critical_path(
    stamps: list[StageStamp], start: float, end: float, colocated: bool = False
) -> list[Segment]:
    """The segments (stages and ``gap``s) that cover ``[start, end]``, oldest first."""
    candidates: list[tuple[int, StageStamp]] = []
    for i, s in enumerate(stamps):
        try:
            waiting = STAGES[StageName(s.stage)].waiting
        except ValueError:
            waiting = False
        if not waiting and s.duration > 0:
            candidates.append((i, s))
    path: list[Segment] = []
    t = end
    while t > start + _EPS:
        # the stage that finished last before t (one still running at t counts as ending at t)
        live = [(min(s.start + s.duration, t), -s.start, i, s) for i, s in candidates if s.start < t - _EPS]
        if not live:
            path.append(Segment(StageName.GAP.value, start, t, Service.ROUTER.value))
            break
        e, _, i, s = max(live)
        if e <= start + _EPS:
            path.append(Segment(StageName.GAP.value, start, t, Service.ROUTER.value))
            break
        if e < t - _EPS:
            path.append(Segment(StageName.GAP.value, e, t, Service.ROUTER.value))
        # it holds the path back to where another stage that ran alongside it finished: that one
        # is what it was waiting on (the KV hand-off waits on the prefill that feeds it)
        inside = [o_end for o_end, _, j, o in live if j != i and s.start < o_end < e - _EPS]
        begin = max(max(inside, default=s.start), start)
        path.append(Segment(s.stage, begin, e, owner(s.stage, colocated), i))
        if begin <= s.start + _EPS:
            candidates.remove((i, s))
        t = begin
    merged: list[Segment] = []
    for seg in reversed(path):  # a stage cut by one that ended inside it is still one segment
        if merged and seg.stamp >= 0 and merged[-1].stamp == seg.stamp:
            seg = Segment(seg.stage, merged.pop().start, seg.end, seg.service, seg.stamp)
        merged.append(seg)
    return merged


@dataclass
class Timeline:
    """One request's stamps, on its clock; ``start`` is when the router received it."""

    start: float
    colocated: bool = False
    stamps: list[StageStamp] = field(default_factory=list)
    end: float | None = None
    path: list[Segment] = field(default_factory=list)  # set by ``finish``

    def add(self, stamps: list[StageStamp]) -> None:
        self.stamps.extend(stamps)

    def finish(self, end: float) -> list[Segment]:
        """The request ended at ``end``: its critical path (kept for ``report``)."""
        self.end = end
        self.path = critical_path(self.stamps, self.start, end, self.colocated)
        return self.path

    def report(self) -> dict[str, Any]:
        """The ``timeline`` field of a response: seconds end to end, seconds per stage (every stamp
        of the stage, summed; ``gap``: the critical path's gaps), and each stamp relative to the
        request's arrival, with whether the critical path goes through it."""
        end = self.end if self.end is not None else self.start
        path = self.path if self.end is not None else []
        critical = {p.stamp for p in path}
        stages: dict[str, float] = {}
        spans = []
        for i, s in sorted(enumerate(self.stamps), key=lambda p: p[1].start):
            stages[s.stage] = stages.get(s.stage, 0.0) + s.duration
            spans.append(
                {
                    "stage": s.stage,
                    "service": owner(s.stage, self.colocated),
                    "start": round(s.start - self.start, 6),
                    "duration": round(s.duration, 6),
                    "critical": i in critical,
                }
            )
        stages[StageName.GAP.value] = sum(p.duration for p in path if p.stamp < 0)
        return {
            "e2e": round(end - self.start, 6),
            "stages": {k: round(v, 6) for k, v in stages.items()},
            "spans": spans,
        }
