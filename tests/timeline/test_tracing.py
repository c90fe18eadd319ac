"""OpenTelemetry export of request timelines (shared/timeline/tracing.py), received by a real
OTLP/HTTP receiver (tests/otlp.py): spans from several processes join the router's trace."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from shared.timeline import Service, StageName, Tracer
from shared.wire.messages import StageStamp
from tests.otlp import PROTOBUF, OtlpReceiver, ReceivedSpan
from tests.repo import REPO_ROOT

pytestmark = pytest.mark.unit

US = 1e-6
SERVER = 2  # opentelemetry.proto.trace.v1.Span.SpanKind.SPAN_KIND_SERVER

# A worker: its own Tracer, its stages exported under the router's traceparent, flushed at exit.
CHILD = """
import json, sys
from shared.timeline import Service, Tracer
from shared.wire.messages import StageStamp

service, endpoint, traceparent, request_id, stamps = sys.argv[1:6]
tracer = Tracer(Service(service), endpoint, instance=service + "-0")
assert tracer.enabled
tracer.export(traceparent, request_id, [StageStamp(*s) for s in json.loads(stamps)], worker=service)
tracer.shutdown()
"""


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


def ids(traceparent: str) -> tuple[str, str, str]:
    """(trace id, span id, flags) of a W3C traceparent."""
    version, trace_id, span_id, flags = traceparent.split("-")
    assert version == "00" and len(trace_id) == 32 and len(span_id) == 16
    return trace_id, span_id, flags


def stamps_from(t0: float, stages: list[StageName], step: float = 0.0125) -> list[StageStamp]:
    """Back-to-back stamps from ``t0``, each ``step`` seconds longer than the one before."""
    out, t = [], t0
    for i, stage in enumerate(stages, 1):
        out.append(StageStamp(stage.value, t, i * step))
        t += i * step
    return out


def assert_spans_are_stamps(spans: list[ReceivedSpan], stamps: list[StageStamp]) -> None:
    assert sorted(s.name for s in spans) == sorted(s.stage for s in stamps)
    by_name = {s.name: s for s in spans}
    for stamp in stamps:
        span = by_name[stamp.stage]
        assert span.start == pytest.approx(stamp.start, abs=US), stamp
        assert span.end == pytest.approx(stamp.start + stamp.duration, abs=US), stamp


def test_spans_from_several_processes_join_the_routers_trace(receiver: OtlpReceiver) -> None:
    t0 = time.time()
    router = Tracer(Service.ROUTER, receiver.endpoint, instance="router-a")
    assert router.enabled
    root = router.open_root("POST /v1/chat/completions", t0)
    assert root is not None
    trace_id, root_span_id, flags = ids(root.traceparent)
    assert int(flags, 16) & 1  # sampled (the SDK may also set 0x02, W3C level 2's random trace id)

    workers = {
        Service.PREFILL: stamps_from(
            t0 + 0.01, [StageName.EMBEDDING_WAIT, StageName.PREFILL_QUEUE, StageName.PREFILL]
        ),
        Service.DECODE: stamps_from(
            t0 + 0.2, [StageName.KV_WAIT, StageName.KV_TRANSFER, StageName.DECODE_QUEUE, StageName.DECODE]
        ),
    }
    children = {
        service: subprocess.Popen(
            [
                sys.executable,
                "-c",
                CHILD,
                service.value,
                receiver.endpoint,
                root.traceparent,
                "req-1",
                json.dumps([[s.stage, s.start, s.duration] for s in stamps]),
            ],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for service, stamps in workers.items()
    }
    for service, child in children.items():
        out, _ = child.communicate(timeout=60)
        assert child.returncode == 0, f"{service} child failed:\n{out}"

    own = stamps_from(t0, [StageName.PREPROCESS, StageName.ADMISSION], step=0.005)
    end = t0 + 1.5
    root.close(end, own, "req-1", **{"http.status_code": 200})
    router.shutdown()

    expected = 1 + len(own) + sum(len(s) for s in workers.values())
    spans = receiver.wait_for(lambda spans: len(spans) >= expected, timeout=10)
    assert len(spans) == expected, [(s.service, s.name) for s in spans]
    assert set(receiver.traces()) == {trace_id}
    assert not receiver.errors

    (root_span,) = [s for s in spans if s.span_id == root_span_id]
    assert root_span.name == "POST /v1/chat/completions"
    assert root_span.parent_span_id == ""
    assert root_span.kind == SERVER
    assert (root_span.service, root_span.instance) == ("epd-router", "router-a")
    assert root_span.start == pytest.approx(t0, abs=US)
    assert root_span.end == pytest.approx(end, abs=US)
    assert root_span.attributes["http.status_code"] == 200

    children_of_root = [s for s in spans if s is not root_span]
    assert all(s.parent_span_id == root_span_id for s in children_of_root)
    assert len({s.span_id for s in spans}) == len(spans)

    for service, stamps in [(Service.ROUTER, own), *workers.items()]:
        mine = [s for s in children_of_root if s.service == f"epd-{service.value}"]
        assert_spans_are_stamps(mine, stamps)
        for s in mine:
            assert s.attributes["epd.stage"] == s.name
            assert s.attributes["epd.service"] == service.value
            assert s.attributes["epd.request_id"] == "req-1"
            if service is not Service.ROUTER:
                assert s.instance == f"{service.value}-0"
                assert s.attributes["worker"] == service.value


def test_a_sampled_client_traceparent_is_the_roots_parent(receiver: OtlpReceiver) -> None:
    client_trace, client_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    tracer = Tracer(Service.ROUTER, receiver.endpoint)
    t0 = time.time()
    root = tracer.open_root("request", t0, client_traceparent=f"00-{client_trace}-{client_span}-01")
    assert root is not None
    trace_id, root_span_id, _ = ids(root.traceparent)
    assert trace_id == client_trace and root_span_id != client_span
    root.close(t0 + 0.5, stamps_from(t0, [StageName.PREPROCESS]), "req-2")
    tracer.shutdown()

    spans = receiver.wait_for(lambda spans: len(spans) >= 2, timeout=10)
    assert set(receiver.traces()) == {client_trace}
    (root_span,) = [s for s in spans if s.span_id == root_span_id]
    assert root_span.parent_span_id == client_span
    (stage,) = [s for s in spans if s is not root_span]
    assert (stage.name, stage.parent_span_id) == ("preprocess", root_span_id)


def test_an_unsampled_client_traceparent_traces_nothing(receiver: OtlpReceiver) -> None:
    unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    tracer = Tracer(Service.ROUTER, receiver.endpoint)
    t0 = time.time()
    assert tracer.open_root("request", t0, client_traceparent=unsampled) is None
    tracer.export(unsampled, "req-3", stamps_from(t0, [StageName.PREPROCESS]))  # not sampled either
    # a sampled request alongside it: its spans arrive, so the absence of the others is not luck
    root = tracer.open_root("request", t0)
    assert root is not None
    root.close(t0 + 0.5, [], "req-4")
    tracer.shutdown()

    spans = receiver.wait_for(lambda spans: len(spans) >= 1, timeout=10)
    assert [(s.name, s.trace_id) for s in spans] == [("request", ids(root.traceparent)[0])]


def test_a_malformed_client_traceparent_starts_a_new_trace(receiver: OtlpReceiver) -> None:
    tracer = Tracer(Service.ROUTER, receiver.endpoint)
    root = tracer.open_root("request", time.time(), client_traceparent="not-a-traceparent")
    assert root is not None
    root.close(time.time(), [], "req-5")
    tracer.shutdown()
    (span,) = receiver.wait_for(lambda spans: len(spans) >= 1, timeout=10)
    assert span.parent_span_id == "" and span.span_id == ids(root.traceparent)[1]


def test_gzip_bodies_are_received(receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip")
    tracer = Tracer(Service.DECODE, receiver.endpoint)
    t0 = time.time()
    tracer.export(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "r", stamps_from(t0, [StageName.DECODE])
    )
    tracer.shutdown()
    (span,) = receiver.wait_for(lambda spans: len(spans) >= 1, timeout=10)
    assert (span.name, span.service, span.parent_span_id) == ("decode", "epd-decode", "00f067aa0ba902b7")
    assert receiver.encodings == ["gzip"]


def test_no_endpoint_is_a_no_op() -> None:
    tracer = Tracer(Service.PREFILL, "")
    assert not tracer.enabled
    assert tracer.open_root("request", time.time()) is None
    tracer.export(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "r", [StageStamp("prefill", 1.0, 0.5)]
    )
    tracer.shutdown()


def test_an_empty_traceparent_exports_nothing(receiver: OtlpReceiver) -> None:
    tracer = Tracer(Service.PREFILL, receiver.endpoint)
    tracer.export("", "r", [StageStamp("prefill", time.time(), 0.5)])
    tracer.shutdown()
    assert receiver.spans() == [] and receiver.requests == 0


def _post(url: str, body: bytes, content_type: str = PROTOBUF) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


def test_the_receiver_answers_only_otlp_trace_exports(receiver: OtlpReceiver) -> None:
    base = receiver.endpoint.removesuffix("/v1/traces")
    empty = ExportTraceServiceRequest().SerializeToString()
    assert _get(base + "/") == 404
    assert _get(receiver.endpoint) == 405
    assert _post(base + "/v1/metrics", empty)[0] == 404
    assert _post(receiver.endpoint, b"{}", "application/json")[0] == 415
    assert _post(receiver.endpoint, b"\xff\xff\xff")[0] == 400
    status, body = _post(receiver.endpoint, empty)
    assert status == 200
    ExportTraceServiceResponse().ParseFromString(body)
    assert receiver.spans() == [] and receiver.requests == 1
