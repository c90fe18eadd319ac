"""OpenTelemetry traces of requests, off by default (``--otlp-traces-endpoint``).

Each process exports the stages it owns as spans of the request's trace, through the
OpenTelemetry SDK and its OTLP/HTTP exporter (``pip install 'epd-serve[tracing]'``). The router
opens the trace: a root span per request (a child of the client's W3C ``traceparent`` when it
sent one), its own stages and the critical path's gaps; it hands the trace context on in
``TraceContext.traceparent`` and each worker exports its stages as children of that root. A span's
times are its stamp's: on the request's clock, so spans from machines whose clocks disagree still
line up (``clock.py``). Spans are batched and exported off the serving loop; a collector that is
down loses spans, never requests.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from shared.extras import require
from shared.timeline.stages import Service
from shared.wire.messages import StageStamp

log = logging.getLogger("tracing")
FEATURE = "--otlp-traces-endpoint"


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


class Tracer:
    """Exports stamps as spans; every method is a no-op when ``endpoint`` is empty."""

    def __init__(self, service: Service, endpoint: str = "", instance: str = "") -> None:
        self.service = service
        self._tracer: Any = None
        self._provider: Any = None
        if not endpoint:
            return
        sdk = require("opentelemetry.sdk.trace", extra="tracing", feature=FEATURE)
        export = require("opentelemetry.sdk.trace.export", extra="tracing", feature=FEATURE)
        resources = require("opentelemetry.sdk.resources", extra="tracing", feature=FEATURE)
        otlp = require(
            "opentelemetry.exporter.otlp.proto.http.trace_exporter", extra="tracing", feature=FEATURE
        )
        propagate = require("opentelemetry.trace.propagation.tracecontext", extra="tracing", feature=FEATURE)
        resource = resources.Resource.create(
            {"service.name": f"epd-{service.value}", "service.instance.id": instance or service.value}
        )
        self._provider = sdk.TracerProvider(resource=resource)
        self._provider.add_span_processor(
            export.BatchSpanProcessor(
                otlp.OTLPSpanExporter(endpoint=endpoint, timeout=5),
                max_queue_size=8192,
                schedule_delay_millis=500,
            )
        )
        self._tracer = self._provider.get_tracer("epd-serve")
        self._propagator = propagate.TraceContextTextMapPropagator()
        log.info("exporting traces to %s as epd-%s", endpoint, service.value)

    @staticmethod
    def _empty() -> Any:
        return require("opentelemetry.context", extra="tracing", feature=FEATURE).Context()

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def _context(self, traceparent: str) -> Any:
        return self._propagator.extract({"traceparent": traceparent})

    def export(
        self, traceparent: str, request_id: str, stamps: Iterable[StageStamp], **attributes: Any
    ) -> None:
        """One span per stamp, children of the span named by ``traceparent`` (nothing when it is
        empty: the request is not traced)."""
        if self._tracer is None or not traceparent:
            return
        ctx = self._context(traceparent)
        for s in stamps:
            self._span(ctx, s.stage, s.start, s.start + s.duration, request_id, attributes)

    def _span(
        self, ctx: Any, name: str, start: float, end: float, request_id: str, attributes: dict[str, Any]
    ) -> None:
        attrs = {"epd.stage": name, "epd.service": self.service.value, "epd.request_id": request_id}
        attrs.update(attributes)
        span = self._tracer.start_span(name, context=ctx, start_time=_ns(start), attributes=attrs)
        span.end(end_time=_ns(max(start, end)))

    def open_root(self, name: str, start: float, client_traceparent: str = "") -> Root | None:
        """The router's span for a whole request, started at ``start`` (request clock); a child of
        the client's trace when ``client_traceparent`` is a valid W3C header."""
        if self._tracer is None:
            return None
        # no client trace: a new one, whatever span this thread may be in
        ctx = self._context(client_traceparent) if client_traceparent else self._empty()
        span = self._tracer.start_span(name, context=ctx, start_time=_ns(start), kind=_server_kind())
        if not span.get_span_context().trace_flags.sampled:
            return None
        carrier: dict[str, str] = {}
        trace = require("opentelemetry.trace", extra="tracing", feature=FEATURE)
        self._propagator.inject(carrier, context=trace.set_span_in_context(span))
        return Root(self, span, carrier.get("traceparent", ""))

    def shutdown(self) -> None:
        """Flush what is batched (at most a few seconds) and stop exporting."""
        if self._provider is not None:
            self._provider.shutdown()


class Root:
    """An open root span; ``traceparent`` is what the router hands on to the workers."""

    def __init__(self, tracer: Tracer, span: Any, traceparent: str) -> None:
        self.tracer, self.span, self.traceparent = tracer, span, traceparent

    def close(self, end: float, stamps: Iterable[StageStamp], request_id: str, **attributes: Any) -> None:
        """Export the router's own ``stamps`` (and gaps) under the root, then end it at ``end``."""
        self.tracer.export(self.traceparent, request_id, stamps)
        for k, v in attributes.items():
            self.span.set_attribute(k, v)
        self.span.end(end_time=_ns(end))


def _server_kind() -> Any:
    return require("opentelemetry.trace", extra="tracing", feature=FEATURE).SpanKind.SERVER
