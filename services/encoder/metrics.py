"""The encoder's Prometheus metrics and its tiny HTTP server: /health, /ready, /metrics.

/health (liveness) answers 200 while the serving loop keeps turning (a loop stuck longer than
``stall_s`` answers 503); /ready (readiness) answers 200 once the vision tower is loaded and the
request socket is bound. Both return a small JSON body. The server runs in a daemon thread and
only reads state the loop publishes; it never touches the model or the sockets.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

PATCH_BUCKETS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
IMAGE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class EncoderMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("encoder_requests", "Encode requests received", registry=r)
        self.images = Counter("encoder_images", "Images received in encode requests", registry=r)
        self.queue_images = Gauge("encoder_queue_images", "Images waiting for a vision forward", registry=r)
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


class Health:
    """State the serving loop publishes for the HTTP thread."""

    def __init__(self, stall_s: float = 300.0) -> None:
        self.stall_s = stall_s
        self.ready = False
        self.last_tick = time.monotonic()
        self.info: dict[str, Any] = {}

    def tick(self) -> None:
        self.last_tick = time.monotonic()

    def live(self) -> bool:
        return time.monotonic() - self.last_tick < self.stall_s


def start_http(host: str, port: int, metrics: EncoderMetrics, health: Health) -> ThreadingHTTPServer:
    """Serve /health, /ready and /metrics on a daemon thread; returns the server (``server_port``)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif path in ("/health", "/healthz", "/livez"):
                live = health.live()
                self._json(200 if live else 503, {"live": live, **health.info})
            elif path in ("/ready", "/readyz"):
                self._json(200 if health.ready else 503, {"ready": health.ready, **health.info})
            else:
                self._json(404, {"error": f"no route {path}"})

        def _json(self, code: int, body: dict[str, Any]) -> None:
            self._reply(code, json.dumps(body).encode(), "application/json")

        def _reply(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet access log
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="encoder-http", daemon=True).start()
    return server
