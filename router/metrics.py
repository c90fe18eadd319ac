"""The router's Prometheus metrics (one registry, served on ``GET /metrics``)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from shared.timeline import stage_histogram
from shared.wire.security import export_refusals

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class RouterMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_open_fds, ...
        self.requests = Counter(
            "router_requests", "HTTP requests, by route and status", ["route", "status"], registry=r
        )
        self.errors = Counter("router_errors", "Errors answered, by kind", ["kind"], registry=r)
        self.retries = Counter("router_retries", "Requests resubmitted after a stage failed", registry=r)
        self.migrations = Counter(
            "router_migrations",
            "Requests resubmitted with the tokens already streamed (a worker died mid-answer)",
            registry=r,
        )
        self.aborts = Counter(
            "router_aborts", "Requests aborted in the workers, by reason", ["reason"], registry=r
        )
        self.ttft = Histogram("router_ttft_seconds", "Time to first token", buckets=_LATENCY, registry=r)
        self.itl = Histogram(
            "router_inter_token_seconds", "Time between tokens", buckets=_LATENCY, registry=r
        )
        self.e2e = Histogram("router_e2e_seconds", "Request latency end to end", buckets=_LATENCY, registry=r)
        self.tokens = Counter("router_generated_tokens", "Tokens streamed to clients", registry=r)
        self.queue = Gauge(
            "router_queue_depth", "Requests waiting or running, by stage", ["stage"], registry=r
        )
        # every stage of the requests that finished, as their services stamped them (shared.timeline)
        self.stage_latency = stage_histogram("router", r)
        self.inflight = Gauge("router_inflight_requests", "Requests in the cluster", registry=r)
        self.image_homes = Gauge(
            "router_image_homes", "Images whose encoder is remembered (cache-aware routing)", registry=r
        )
        self.image_homes_max = Gauge("router_image_homes_max", "Cap on router_image_homes", registry=r)
        export_refusals("router", r)  # rogue peers at the inbox (--curve-keys)

    def token(self, live: Any, now: float) -> None:
        """One token of a request streamed at ``now``: TTFT or inter-token time. ``live`` has
        ``submitted``, ``first``, ``last`` (monotonic) and ``tokens``."""
        if live.tokens == 0:
            live.first = now
            self.ttft.observe(now - live.submitted)
        else:
            self.itl.observe(now - live.last)
        live.tokens, live.last = live.tokens + 1, now
        self.tokens.inc()
