"""The Grafana dashboard (deploy/grafana): the committed JSON is what ``make_dashboard.py`` writes, it
has a panel for every stage of ``shared.timeline.stages`` (the router's view and each worker's), its
panels fit the grid, and every metric its PromQL reads is served by a live cluster's /metrics (with
samples for every stage it selects once a request with an image went through)."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from deploy.grafana.make_dashboard import OUTPUT, WORKERS, render
from shared.timeline.stages import STAGES, StageName, stages_of
from tests.cluster import EpdCluster, wait_for
from tests.demo_pictures import data_url
from tests.encoder.conftest import png

SERVICES = ("router", *WORKERS)  # whose /metrics the dashboard reads: a metric's prefix names it
ROUTER_STAGES = "router_stage_latency_seconds"

# PromQL, enough of it for the dashboard's expressions: what is left once strings, label matchers,
# range windows and grouping clauses are gone, less function names and keywords, is metric names.
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.])[a-zA-Z_:][\w:]*(?![\w:])(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan"}
_STAGE_MATCHER = re.compile(r'([a-zA-Z_:][\w:]*)\{[^}]*\bstage(=~?)"([^"]*)"')
_QUANTILE = re.compile(r"histogram_quantile\(\s*([\d.]+)")
# What a sample name's suffix says about its family: (family type it needs) per suffix.
_SUFFIXES = {
    "_bucket": {"histogram"},
    "_sum": {"histogram", "summary"},
    "_count": {"histogram", "summary"},
    "_total": {"counter"},
}


def metric_names(expr: str) -> set[str]:
    bare = _GROUPING.sub("", _RANGES.sub("", _MATCHERS.sub("", _QUOTED.sub('""', expr))))
    return {m for m in _IDENTIFIER.findall(bare) if m.lower() not in _KEYWORDS}


def stage_selections(expr: str) -> set[tuple[str, str]]:
    """(metric, stage) for every ``stage="X"`` (or ``stage=~"X|Y"``) matcher in ``expr``."""
    out = set()
    for metric, op, value in _STAGE_MATCHER.findall(expr):
        out |= {(metric, v) for v in (value.split("|") if op == "=~" else [value])}
    return out


def family_of(sample: str) -> tuple[str, set[str] | None]:
    """A sample name's family and the family types it can belong to (None: any)."""
    for suffix, types in _SUFFIXES.items():
        if sample.endswith(suffix):
            return sample.removesuffix(suffix), types
    return sample, None


# The dashboard


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(OUTPUT.read_text())


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dash["panels"] if p["type"] != "row"]


def exprs(panel: dict[str, Any]) -> list[str]:
    return [t["expr"] for t in panel.get("targets", [])]


def all_exprs(dash: dict[str, Any]) -> list[str]:
    return [e for p in panels(dash) for e in exprs(p)]


def selections(panel: dict[str, Any]) -> set[tuple[str, str]]:
    return {s for e in exprs(panel) for s in stage_selections(e)}


@pytest.mark.unit
def test_committed_json_is_what_the_script_writes():
    assert OUTPUT.read_text() == render(), "stale: run python -m deploy.grafana.make_dashboard"


@pytest.mark.unit
def test_every_stage_has_its_router_panel(dashboard):
    by_title = {p["title"]: p for p in panels(dashboard)}
    for stage in StageName:
        panel = by_title.get(str(stage))
        assert panel is not None, f"no panel titled {stage!r}"
        assert selections(panel) == {(f"{ROUTER_STAGES}_bucket", stage)}, panel["title"]
        assert {float(q) for e in exprs(panel) for q in _QUANTILE.findall(e)} == {0.5, 0.99}
    mean = by_title["Mean seconds per request by stage"]
    critical = {s for s in StageName if not STAGES[s].waiting}
    assert {s for m, s in selections(mean) if m == f"{ROUTER_STAGES}_sum"} == critical


@pytest.mark.unit
def test_every_worker_stage_is_on_its_service_panel(dashboard):
    for service in WORKERS:
        family = f"{service}_stage_latency_seconds"
        own = [p for p in panels(dashboard) if any(family in e for e in exprs(p))]
        assert own, f"no panel reads {family}"
        assert {s for p in own for m, s in selections(p) if m == f"{family}_bucket"} == set(
            stages_of(service)
        )


@pytest.mark.unit
def test_only_registered_stages_and_known_services_are_queried(dashboard):
    queried = {s for e in all_exprs(dashboard) for s in stage_selections(e)}
    assert {stage for _, stage in queried} <= set(StageName), "a stage outside shared.timeline.stages"
    names = {n for e in all_exprs(dashboard) for n in metric_names(e)}
    assert f"{ROUTER_STAGES}_bucket" in names and "router_ttft_seconds_bucket" in names  # the parser works
    assert all(n.split("_", 1)[0] in SERVICES for n in names), sorted(names)


@pytest.mark.unit
def test_layout(dashboard):
    """Schema 39 with a Prometheus input; ids unique; every panel inside the 24-wide grid, none overlapping."""
    assert dashboard["schemaVersion"] == 39
    assert [i["pluginId"] for i in dashboard["__inputs"]] == ["prometheus"]
    assert [v["type"] for v in dashboard["templating"]["list"]] == ["datasource"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]


# A live cluster


def scrape(url: str) -> list[Metric]:
    return list(text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text))


def service_urls(cluster: EpdCluster, service: str) -> list[str]:
    """The HTTP base URL of every process of ``service`` (workers from their ready files)."""
    if service == "router":
        return [cluster.url]
    names = sorted(
        p.name.removesuffix(".ready.json") for p in cluster.log_dir.glob(f"{service}-*.ready.json")
    )
    assert names, f"no {service} worker in {cluster.log_dir}"
    return [cluster.ready(n)["http"] for n in names]


def served(cluster: EpdCluster) -> dict[str, list[Metric]]:
    """Every service's metric families, all its processes together."""
    return {s: [f for url in service_urls(cluster, s) for f in scrape(url)] for s in SERVICES}


@pytest.fixture(scope="module")
def after_image_request(cluster: EpdCluster) -> EpdCluster:
    """The cluster once a chat request with an image went through every stage (a few decode steps)."""
    parts = [
        {"type": "text", "text": "Describe this."},
        {"type": "image_url", "image_url": {"url": data_url(png(64, 48, seed=7))}},
    ]
    body = {
        "model": cluster.model,
        "messages": [{"role": "user", "content": parts}],
        "max_tokens": 4,
        "temperature": 0,
        "ignore_eos": True,
    }
    resp = httpx.post(cluster.url + "/v1/chat/completions", json=body, timeout=120)
    assert resp.status_code == 200, resp.text
    return cluster


@pytest.mark.cluster
def test_every_queried_metric_is_served(after_image_request, dashboard):
    families = served(after_image_request)
    types = {s: {f.name: f.type for f in fams} for s, fams in families.items()}
    missing = []
    for name in sorted({n for e in all_exprs(dashboard) for n in metric_names(e)}):
        service = name.split("_", 1)[0]
        family, allowed = family_of(name)
        kind = types[service].get(family)
        if kind is None or (allowed is not None and kind not in allowed):
            missing.append(f"{name} ({service} serves {family!r} as {kind})")
    assert not missing, "the dashboard reads metrics no service serves:\n  " + "\n  ".join(missing)


@pytest.mark.cluster
def test_every_queried_stage_has_samples(after_image_request, dashboard):
    """Every (histogram, stage) a panel selects has a live sample after one image request."""
    wanted = {s for e in all_exprs(dashboard) for s in stage_selections(e)}

    def missing() -> set[tuple[str, str]]:
        live = {
            (sample.name, sample.labels.get("stage", ""))
            for fams in served(after_image_request).values()
            for f in fams
            for sample in f.samples
        }
        return wanted - live

    wait_for(lambda: not missing(), timeout=10, interval=0.5)  # the router observes once it is done
    assert not missing(), f"no live samples for: {sorted(missing())}"
