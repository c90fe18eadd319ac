"""The decode worker's Prometheus metrics (served by ``services.common.http`` on /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from shared.timeline import stage_histogram
from shared.wire.monitor import wire_counters

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class DecodeMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_open_fds, ...
        self.errors = Counter("decode_errors", "Errors reported, by kind", ["kind"], registry=r)
        self.running = Gauge("decode_running_requests", "Sequences in the running batch", registry=r)
        self.queued = Gauge("decode_queued_requests", "Waiting, swapped, importing or pending", registry=r)
        self.pending = Gauge("decode_pending_reservations", "Reservations waiting for room", registry=r)
        self.queued_reservations = Gauge(
            "decode_reservations_queued", "Reservations that waited for room, since start", registry=r
        )
        self.free_blocks = Gauge("decode_free_blocks", "Free KV blocks", registry=r)
        self.total_blocks = Gauge("decode_total_blocks", "KV blocks in the pool", registry=r)
        self.graph_ready = Gauge(
            "decode_graph_ready", "1 once decode steps run the compiled graph (--compile-decode)", registry=r
        )
        self.tokens = Counter("decode_tokens", "Tokens generated", registry=r)
        self.imports = Counter("decode_imports", "KV transfers completed", registry=r)
        self.kv_bytes = Counter("decode_kv_bytes_received", "KV payload bytes received", registry=r)
        self.kv_copied = Counter(
            "decode_kv_bytes_copied",
            "KV bytes copied out of transfer frames into the pool (0 under one-sided writes)",
            registry=r,
        )
        self.refusals = Counter("decode_refusals", "Reservations refused, by kind", ["kind"], registry=r)
        self.step_seconds = Histogram(
            "decode_step_seconds", "Engine step time", buckets=LATENCY_BUCKETS, registry=r
        )
        self.handoff_seconds = Histogram(
            "decode_handoff_seconds",
            "Last KV layer received to the first decode token sent",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stages = stage_histogram("decode", r)  # shared.timeline: this worker's stages
        self.malformed, self.oversized_drops, self.protocol_drops = wire_counters("decode", r)
