"""The encoder's Prometheus metrics (served by ``services.common.http`` on /metrics)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
)

from shared.timeline import stage_histogram
from shared.wire.monitor import wire_counters

PATCH_BUCKETS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
IMAGE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class EncoderMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_open_fds, ...
        self.requests = Counter("encoder_requests", "Encode requests received", registry=r)
        self.images = Counter("encoder_images", "Images received in encode requests", registry=r)
        self.queue_images = Gauge("encoder_queue_images", "Images waiting for a vision forward", registry=r)
        self.preparing_images = Gauge(
            "encoder_preparing_images", "Images being decoded and preprocessed off the loop", registry=r
        )
        self.queue_patches = Gauge(
            "encoder_queue_patches", "Patches waiting for a vision forward", registry=r
        )
        self.batch_images = Histogram(
            "encoder_batch_images", "Images per vision forward", buckets=IMAGE_BUCKETS, registry=r
        )
        self.batch_patches = Histogram(
            "encoder_batch_patches", "Patches per vision forward", buckets=PATCH_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            "encoder_batch_requests",
            "Distinct requests per vision forward",
            buckets=IMAGE_BUCKETS,
            registry=r,
        )
        self.forward_seconds = Histogram(
            "encoder_forward_seconds", "Vision forward time per batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.forwards = Counter("encoder_vision_forwards", "Vision forwards run", registry=r)
        self.encode_latency = Histogram(
            "encoder_encode_latency_seconds",
            "Request arrival to result sent, per image",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cache_lookups = Counter(
            "encoder_cache_lookups", "Cache lookups by result (hit, miss, coalesced)", ["result"], registry=r
        )
        self.cache_hit_rate = Gauge("encoder_cache_hit_rate", "Cache hits / lookups since start", registry=r)
        self.cache_bytes = Gauge("encoder_cache_bytes", "Bytes held by the embedding cache", registry=r)
        self.cache_max_bytes = Gauge(
            "encoder_cache_max_bytes", "The embedding cache's cap (--cache-bytes)", registry=r
        )
        self.cache_evictions = Counter("encoder_cache_evictions", "Cache entries evicted", registry=r)
        self.bytes_shipped = Counter(
            "encoder_bytes_shipped", "Bytes of embedding results sent to prefill", registry=r
        )
        self.results = Counter("encoder_results", "Embedding results sent", ["cached"], registry=r)
        self.errors = Counter("encoder_errors", "Errors reported, by kind", ["kind"], registry=r)
        self.cache_misses_reported = Counter(
            "encoder_cache_miss_replies", "Images answered with a cache miss", registry=r
        )
        self.send_failures = Counter(
            "encoder_send_failures", "Results or errors that could not be delivered", registry=r
        )
        self.stages = stage_histogram("encoder", r)  # shared.timeline: this worker's stages
        self.malformed, self.oversized_drops, self.protocol_drops = wire_counters("encoder", r)
        self.peer_limit_refusals = Counter(
            "encoder_peer_limit_refusals", "Requests refused: their peer had too many in flight", registry=r
        )
