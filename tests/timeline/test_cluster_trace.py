"""A whole cluster (``epd up``) exporting traces to a local OTLP receiver, with two services' wall
clocks skewed (``EPD_FAKE_CLOCK_SKEW_S``, ``shared/runtime.py``): each request's trace has the spans of every service it crossed,
each stage timed by the service that owns it, the critical path plus the router's gap spans cover
the end-to-end time, and the skewed services' spans still sit in the right place and order.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from shared.runtime import SKEW_ENV
from shared.timeline import STAGES, Service, StageName
from tests.cluster import EpdCluster, start_cluster
from tests.encoder.conftest import png
from tests.engine.conftest import SPEC
from tests.otlp import OtlpReceiver, ReceivedSpan

pytestmark = pytest.mark.cluster

SKEW = {"encoder-0": 40.0, "prefill-0": -45.0}  # wall clocks off by more than any request lasts
TOLERANCE = 0.005  # seconds: a message's transit, which a receiver's clock cannot see
CLIENT_TRACE = "00-" + "5a" * 16 + "-" + "c3" * 8 + "-01"


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


@pytest.fixture(scope="module")
def cluster(tiny_checkpoint, receiver: OtlpReceiver, tmp_path_factory) -> Iterator[EpdCluster]:
    env = [a for service, skew in SKEW.items() for a in ("--service-env", f"{service}:{SKEW_ENV}={skew}")]
    with start_cluster(
        tiny_checkpoint(**SPEC), tmp_path_factory.mktemp("epd-trace"),
        "--dtype", "float32", "--otlp-traces-endpoint", receiver.endpoint, *env,
        "--router-arg=--max-images=4", "--router-arg=--heartbeat-timeout-s=15",
    ) as c:  # fmt: skip
        yield c


def chat(cluster: EpdCluster, images: int, stream: bool = False, traceparent: str = "") -> dict:
    content: list[dict] = [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(
            png(48 + 16 * i, 40, seed=100 * images + i)).decode()}}
        for i in range(images)
    ]  # fmt: skip
    content.append({"type": "text", "text": f"Describe {images} pictures."})
    body = {
        "model": cluster.model, "messages": [{"role": "user", "content": content}],
        "max_tokens": 6, "temperature": 0, "ignore_eos": True, "stream": stream,
    }  # fmt: skip
    headers = {"traceparent": traceparent} if traceparent else {}
    with httpx.Client(timeout=120) as http:
        if not stream:
            r = http.post(f"{cluster.url}/v1/chat/completions", json=body, headers=headers)
            assert r.status_code == 200, r.text
            return r.json()
        with http.stream("POST", f"{cluster.url}/v1/chat/completions", json=body, headers=headers) as r:
            chunks = [json.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: {")]
    final = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(final) == 1 and all("timeline" not in c for c in chunks if c not in final)
    return {**final[0], "id": chunks[0]["id"]}


def trace_of(
    receiver: OtlpReceiver, request_id: str, services: set[str], stages: set[str] | None = None
) -> list[ReceivedSpan]:
    """The spans of the request's trace, once every service's and every named stage's arrived (a
    service batches its exports: one stage's span may come a batch after another's)."""

    def spans() -> list[ReceivedSpan]:
        roots = [
            s for s in receiver.spans() if s.attributes.get("epd.request_id") == request_id and s.kind == 2
        ]
        if not roots:
            return []
        trace = [s for s in receiver.spans() if s.trace_id == roots[0].trace_id]
        done = {s.service for s in trace} >= services and {s.name for s in trace} >= (stages or set())
        return trace if done else []

    receiver.wait_for(lambda _: bool(spans()), timeout=20)
    return spans()


def covered(intervals: list[tuple[float, float]], start: float, end: float) -> float:
    """Seconds of [start, end] inside the union of ``intervals``."""
    total, reach = 0.0, start
    for a, b in sorted((max(a, start), min(b, end)) for a, b in intervals):
        if b > reach:
            total += b - max(a, reach)
            reach = b
    return total


@pytest.mark.parametrize(("images", "stream"), [(0, False), (1, False), (2, True), (3, False)])
def test_a_trace_per_request_across_every_service(cluster, receiver, images: int, stream: bool) -> None:
    answer = chat(cluster, images, stream)
    timeline = answer["timeline"]
    crossed = {"router", "prefill", "decode"} | ({"encoder"} if images else set())
    reported_stages = {sp["stage"] for sp in timeline["spans"]}
    spans = trace_of(receiver, answer["id"], {f"epd-{s}" for s in crossed}, reported_stages)
    root = next(s for s in spans if s.kind == 2)
    assert root.parent_span_id == "" and root.service == "epd-router"
    assert {s.service.removeprefix("epd-") for s in spans} == crossed
    stages = [s for s in spans if s is not root]
    assert all(s.parent_span_id == root.span_id for s in stages)

    # every stage is timed by the service that owns it, and is the one the response reports
    for s in stages:
        stage = StageName(s.attributes["epd.stage"])
        assert Service(s.service.removeprefix("epd-")) in STAGES[stage].owners, (s.name, s.service)
    # same stages, same durations: the response rounds its figures, the exporter keeps nanoseconds
    reported = sorted((sp["stage"], sp["duration"]) for sp in timeline["spans"])
    exported = sorted((s.name, s.duration) for s in stages if s.name != "gap")
    assert [name for name, _ in reported] == [name for name, _ in exported]
    for (name, ours), (_, theirs) in zip(reported, exported, strict=True):
        assert abs(ours - theirs) <= 2e-4, (name, ours, theirs)
    expected = {"preprocess", "admission", "prefill_queue", "prefill", "kv_wait", "kv_transfer", "decode_queue",
                "decode"}  # fmt: skip
    if images:
        expected |= {"encode_queue", "vision", "embedding_wait"}
    assert {s.name for s in stages} - {"gap"} == expected
    assert sum(s.name == "vision" for s in stages) == images

    # the router's end to end: covered by the critical path (no waiting stage) plus the gaps
    e2e = root.duration
    assert abs(timeline["e2e"] - e2e) <= 0.01 * e2e + 1e-3
    active = [(s.start, s.end) for s in stages if not STAGES[StageName(s.name)].waiting]
    assert covered(active, root.start, root.end) >= 0.95 * e2e, (e2e, [(s.name, s.start - root.start,
                                                                      s.duration) for s in stages])  # fmt: skip
    gaps = [s for s in stages if s.name == "gap"]
    others = [(s.start, s.end) for s in stages if s.name != "gap" and not STAGES[StageName(s.name)].waiting]
    assert sum(covered(others, g.start, g.end) for g in gaps) <= TOLERANCE * max(1, len(gaps))

    # skewed clocks (encoder +40 s, prefill -45 s): spans still inside the request, in order
    for s in stages:
        assert root.start - TOLERANCE <= s.start <= s.end <= root.end + TOLERANCE, (s.name, s.service)
    first = {s.name: s for s in sorted(stages, key=lambda s: -s.start)}  # each stage's earliest span
    last_end = {name: max(s.end for s in stages if s.name == name) for name in first}
    chain = ["preprocess", "admission", *(["vision"] if images else []), "prefill_queue", "prefill"]
    for before, after in zip(chain, chain[1:], strict=False):
        assert last_end[before] <= first[after].start + TOLERANCE, (before, after)
    assert last_end["prefill"] <= first["decode_queue"].start + TOLERANCE
    assert last_end["decode_queue"] <= first["decode"].start + TOLERANCE


def test_the_client_trace_is_continued(cluster, receiver) -> None:
    answer = chat(cluster, 1, traceparent=CLIENT_TRACE)
    spans = trace_of(receiver, answer["id"], {"epd-router", "epd-encoder", "epd-prefill", "epd-decode"})
    root = next(s for s in spans if s.kind == 2)
    assert root.trace_id == CLIENT_TRACE.split("-")[1] and root.parent_span_id == CLIENT_TRACE.split("-")[2]


def test_every_service_reports_its_stages_on_metrics(cluster) -> None:
    chat(cluster, 1)
    for service in (Service.ENCODER, Service.PREFILL, Service.DECODE):
        for stage in (s for s, info in STAGES.items() if service in info.owners):
            name = f"{service.value}-0"
            assert (
                cluster.metric(name, f"{service.value}_stage_latency_seconds_count", f'stage="{stage}"') > 0
            )
    for stage in StageName:
        assert cluster.metric("router", "router_stage_latency_seconds_count", f'stage="{stage}"') > 0, stage


def test_skewed_services_ran_on_a_skewed_clock(cluster) -> None:
    """The injection is real: the services start together, and their first log lines carry their
    own wall clock's times (``epd up`` starts every service at once)."""

    def first_time(name: str) -> float:
        line = (Path(cluster.log_dir) / f"{name}.log").read_text().splitlines()[0]
        return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()

    router = first_time("router")
    assert first_time("encoder-0") - router > 30  # +40 s
    assert first_time("prefill-0") - router < -30  # -45 s
    assert abs(first_time("decode-0") - router) < 15  # not skewed
