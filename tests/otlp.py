"""A local OTLP/HTTP trace receiver for tests: what the services' ``--otlp-traces-endpoint`` exports.

    with OtlpReceiver() as receiver:
        tracer = Tracer(Service.ROUTER, receiver.endpoint)
        ...
        tracer.shutdown()
        spans = receiver.wait_for(lambda spans: len(spans) >= 3)

It answers ``POST /v1/traces`` (``application/x-protobuf``, gzip or deflate bodies too) with an
``ExportTraceServiceResponse`` and keeps each span, flattened to a ``ReceivedSpan``; anything else
gets 404 (another path) or 405/415 (another method or content type).
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

PATH = "/v1/traces"
PROTOBUF = "application/x-protobuf"


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str  # 16 hex digits, "" for a span without a parent
    name: str
    service: str  # resource attribute service.name
    instance: str  # resource attribute service.instance.id
    start: float  # seconds since the epoch
    end: float
    kind: int  # opentelemetry.proto.trace.v1.Span.SpanKind
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return self.end - self.start


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return _attributes(v.kvlist_value.values)
    return getattr(v, which)


def _attributes(kvs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs:
        assert isinstance(kv, KeyValue)
        out[kv.key] = _value(kv.value)
    return out


def parse(body: bytes) -> list[ReceivedSpan]:
    """The spans of one serialized ``ExportTraceServiceRequest``."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for rs in request.resource_spans:
        resource = _attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                spans.append(
                    ReceivedSpan(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        name=s.name,
                        service=str(resource.get("service.name", "")),
                        instance=str(resource.get("service.instance.id", "")),
                        start=s.start_time_unix_nano / 1e9,
                        end=s.end_time_unix_nano / 1e9,
                        kind=s.kind,
                        attributes=_attributes(s.attributes),
                    )
                )
    return spans


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _answer(self, status: int, body: bytes = b"", content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(404 if self.path != PATH else 405, b"not an OTLP endpoint for GET")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.split("?")[0] != PATH:
            self._answer(404, b"not found")
            return
        if (self.headers.get("Content-Type") or "").split(";")[0].strip() != PROTOBUF:
            self._answer(415, b"only application/x-protobuf")
            return
        encoding = (self.headers.get("Content-Encoding") or "").strip().lower()
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            elif encoding not in ("", "identity"):
                self._answer(415, f"unknown Content-Encoding {encoding}".encode())
                return
            spans = parse(body)
        except Exception as e:  # a malformed body is the exporter's bug: say so, keep serving
            self.server.receiver.errors.append(f"{type(e).__name__}: {e}")
            self._answer(400, str(e).encode())
            return
        self.server.receiver._add(spans, encoding)
        self._answer(200, ExportTraceServiceResponse().SerializeToString(), PROTOBUF)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: OtlpReceiver


class OtlpReceiver:
    """An OTLP/HTTP trace receiver on 127.0.0.1 (an ephemeral port) in a background thread."""

    def __init__(self) -> None:
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self.requests = 0  # export requests accepted
        self.encodings: list[str] = []  # Content-Encoding of each export accepted ("" for none)
        self.errors: list[str] = []  # bodies that did not parse
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> OtlpReceiver:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.receiver = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="otlp-receiver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "the receiver is not started"
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        """The URL to give an exporter (``--otlp-traces-endpoint``)."""
        return f"http://127.0.0.1:{self.port}{PATH}"

    def _add(self, spans: list[ReceivedSpan], encoding: str) -> None:
        with self._lock:
            self._spans.extend(spans)
            self.encodings.append(encoding)
            self.requests += 1

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def traces(self) -> dict[str, list[ReceivedSpan]]:
        """The spans received so far by trace id, each trace's oldest first."""
        out: dict[str, list[ReceivedSpan]] = {}
        for s in sorted(self.spans(), key=lambda s: s.start):
            out.setdefault(s.trace_id, []).append(s)
        return out

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()

    def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float = 10.0
    ) -> list[ReceivedSpan]:
        """The spans once ``predicate(spans)`` holds; AssertionError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans()
            if predicate(spans):
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the OTLP receiver did not get the spans expected within {timeout:.0f} s; it has "
                    f"{len(spans)}: {[(s.service, s.name) for s in spans]} (errors: {self.errors})"
                )
            time.sleep(0.02)
