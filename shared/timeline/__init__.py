"""Where a request's time goes: stage names (``stages``), stamps on the request's clock
(``clock``), the router's assembled timeline and critical path (``timeline``), per-stage
histograms (``metrics``) and OpenTelemetry export (``tracing``)."""

from shared.timeline.clock import RequestClock
from shared.timeline.metrics import observe, stage_histogram
from shared.timeline.stages import STAGES, Service, StageName, stages_of
from shared.timeline.timeline import Segment, Timeline, critical_path
from shared.timeline.tracing import Root, Tracer

__all__ = [
    "STAGES",
    "RequestClock",
    "Root",
    "Segment",
    "Service",
    "StageName",
    "Timeline",
    "Tracer",
    "critical_path",
    "observe",
    "stage_histogram",
    "stages_of",
]
