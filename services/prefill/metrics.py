"""The prefill worker's Prometheus metrics (served by ``services.common.http`` on /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from shared.timeline import stage_histogram
from shared.wire.monitor import wire_counters

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class PrefillMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_open_fds, ...
        self.requests = Counter("prefill_requests", "Prefill requests received", registry=r)
        self.errors = Counter("prefill_errors", "Errors reported, by kind", ["kind"], registry=r)
        self.waiting = Gauge("prefill_waiting_requests", "Requests waiting for embeddings", registry=r)
        self.running = Gauge("prefill_running_requests", "Requests in the engine", registry=r)
        self.transfers = Gauge(
            "prefill_transfers", "Computed prompts waiting for or in a transfer", registry=r
        )
        self.free_blocks = Gauge("prefill_free_blocks", "Free KV blocks (cached ones included)", registry=r)
        self.total_blocks = Gauge("prefill_total_blocks", "KV blocks in the pool", registry=r)
        self.orphan_bytes = Gauge("prefill_orphan_bytes", "Embeddings waiting for their request", registry=r)
        self.orphan_max_bytes = Gauge("prefill_orphan_max_bytes", "Cap on prefill_orphan_bytes", registry=r)
        self.prefix_cached_blocks = Gauge(
            "prefill_prefix_cached_blocks",
            "KV blocks holding a prefix-cache entry (in use or not)",
            registry=r,
        )
        self.kv_bytes = Counter("prefill_kv_bytes_sent", "KV payload bytes sent to decode", registry=r)
        self.transfers_done = Counter("prefill_transfers_completed", "KV transfers acknowledged", registry=r)
        self.prompt_tokens = Counter("prefill_prompt_tokens", "Prompt tokens prefilled", registry=r)
        self.cached_prompt_tokens = Counter(
            "prefill_prompt_tokens_cached",
            "Prompt tokens found in the prefix cache (not computed)",
            registry=r,
        )
        self.ttft = Histogram(
            "prefill_first_token_seconds",
            "Request admitted to first token sent",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.transfer_seconds = Histogram(
            "prefill_transfer_seconds", "Grant to ack of one KV transfer", buckets=LATENCY_BUCKETS, registry=r
        )
        self.stages = stage_histogram("prefill", r)  # shared.timeline: this worker's stages
        self.malformed, self.oversized_drops, self.protocol_drops = wire_counters("prefill", r)
        self.peer_limit_refusals = Counter(
            "prefill_peer_limit_refusals", "Requests refused: their peer had too many in flight", registry=r
        )
