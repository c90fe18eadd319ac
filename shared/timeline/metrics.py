"""The per-stage latency histogram every service exposes: ``<service>_stage_latency_seconds{stage}``
(the router's ``router_stage_latency_seconds`` holds every stage of the requests it finished)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Histogram

from shared.wire.messages import StageStamp

STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def stage_histogram(service: str, registry: CollectorRegistry) -> Histogram:
    return Histogram(
        f"{service}_stage_latency_seconds",
        "Time requests spent per stage (shared.timeline.StageName)",
        ["stage"],
        buckets=STAGE_BUCKETS,
        registry=registry,
    )


def observe(histogram: Histogram, stamps: Iterable[StageStamp]) -> None:
    for s in stamps:
        histogram.labels(s.stage).observe(s.duration)
