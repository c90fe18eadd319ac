"""The epd-serve Grafana dashboard, built from the stage registry: owns ``epd-dashboard.json``.

Rows: "Request" (the router's TTFT, end-to-end and inter-token latency, request rate by status,
errors, queue depth, tokens per second), "Stages (router view)" (one panel per
``shared.timeline.StageName`` from ``router_stage_latency_seconds``, and the mean time a request
spends in each stage, stacked) and "Workers" (each worker service's ``<service>_stage_latency_seconds``,
p99 by stage). The panels follow ``shared.timeline.stages``, so a new stage gets its panels by
rerunning this script; the JSON is committed so that it imports without running anything, and
``tests/router/test_dashboard.py`` fails while it differs from what this script writes.

    python -m deploy.grafana.make_dashboard          # rewrite deploy/grafana/epd-dashboard.json
    python -m deploy.grafana.make_dashboard --check  # exit 1 if the committed JSON is stale
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

from shared.timeline.stages import STAGES, Service, StageName, stages_of

OUTPUT = Path(__file__).with_name("epd-dashboard.json")
WORKERS = (Service.ENCODER, Service.PREFILL, Service.DECODE)
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "[$__rate_interval]"
WIDTH = 24  # Grafana's grid

Panel = dict[str, Any]
Placed = tuple[Panel, int, int]  # a panel, its width and height in grid units


# PromQL


def stage_selector(stage: StageName) -> str:
    return f'{{stage="{stage}"}}'


def quantile(q: float, histogram: str, selector: str = "") -> str:
    """The ``q`` quantile of a histogram family over every instance, per scrape-aware rate window."""
    return f"histogram_quantile({q}, sum by (le) (rate({histogram}_bucket{selector}{RATE})))"


def rate(series: str, by: str = "") -> str:
    return f"sum by ({by}) (rate({series}{RATE}))" if by else f"sum(rate({series}{RATE}))"


def mean_per_request(stage: StageName) -> str:
    """Seconds the router's finished requests spent in ``stage``, divided by the requests finished."""
    spent = rate(f"router_stage_latency_seconds_sum{stage_selector(stage)}")
    return f"{spent} / scalar({rate('router_e2e_seconds_count')})"


# Panels


def target(expr: str, legend: str) -> dict[str, Any]:
    return {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend,
        "range": True,
    }


def timeseries(
    title: str, description: str, targets: list[dict[str, Any]], unit: str = "s", stacked: bool = False
) -> Panel:
    custom = {
        "drawStyle": "line",
        "fillOpacity": 60 if stacked else 0,
        "lineWidth": 1,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"group": "A", "mode": "normal" if stacked else "none"},
    }
    return {
        "datasource": DATASOURCE,
        "description": description,
        "fieldConfig": {
            "defaults": {"color": {"mode": "palette-classic"}, "custom": custom, "min": 0, "unit": unit},
            "overrides": [],
        },
        "options": {
            "legend": {"calcs": [], "displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": [{**t, "refId": chr(ord("A") + i)} for i, t in enumerate(targets)],  # A..Z
        "title": title,
        "type": "timeseries",
    }


def p50_p99(title: str, description: str, histogram: str, selector: str = "") -> Panel:
    targets = [target(quantile(q, histogram, selector), f"p{round(q * 100)}") for q in (0.5, 0.99)]
    return timeseries(title, description, targets)


# Rows


def request_row() -> list[Placed]:
    latencies = [
        ("Time to first token", "router_ttft_seconds", "Request received to its first token streamed."),
        ("End-to-end latency", "router_e2e_seconds", "Request received to its last token."),
        ("Inter-token latency", "router_inter_token_seconds", "Time between consecutive tokens."),
    ]
    load = [
        timeseries(
            "Requests per second by status",
            "/v1/ requests answered, by HTTP status (router_requests_total).",
            [target(rate("router_requests_total", "status"), "{{status}}")],
            unit="reqps",
        ),
        timeseries(
            "Errors, retries and aborts per second",
            "Errors answered by kind, requests resubmitted after a stage failed, requests aborted.",
            [
                target(rate("router_errors_total", "kind"), "error: {{kind}}"),
                target(rate("router_retries_total"), "retries"),
                target(rate("router_aborts_total", "reason"), "abort: {{reason}}"),
            ],
            unit="ops",
        ),
        timeseries(
            "Queue depth by stage",
            "Requests waiting or running at each stage (router_queue_depth), and in the cluster in all.",
            [
                target("sum by (stage) (router_queue_depth)", "{{stage}}"),
                target("sum(router_inflight_requests)", "in flight"),
            ],
            unit="short",
        ),
        timeseries(
            "Generated tokens per second",
            "Tokens streamed to clients (router_generated_tokens_total).",
            [target(rate("router_generated_tokens_total"), "tokens/s")],
            unit="short",
        ),
    ]
    return [(p50_p99(t, d, h), 8, 8) for t, h, d in latencies] + [(p, 6, 8) for p in load]


def stage_description(stage: StageName) -> str:
    info = STAGES[stage]
    owners = ", ".join(info.owners)
    waiting = (
        " A waiting stage: it overlaps what it waits for, off the critical path." if info.waiting else ""
    )
    return (
        f'Stage "{stage}": {info.help} (stamped by {owners}).{waiting} '
        f"p50 and p99 of router_stage_latency_seconds over the requests the router finished."
    )


def stage_row() -> list[Placed]:
    panels: list[Placed] = [
        (
            p50_p99(stage, stage_description(stage), "router_stage_latency_seconds", stage_selector(stage)),
            6,
            7,
        )
        for stage in StageName
    ]
    critical = [s for s in StageName if not STAGES[s].waiting]
    waiting = ", ".join(s for s in StageName if STAGES[s].waiting)
    mean = timeseries(
        "Mean seconds per request by stage",
        "Seconds per finished request spent in each critical-path stage, stacked in pipeline order "
        f"(waiting stages left out: {waiting}); the dashed line is the mean end-to-end latency.",
        [target(mean_per_request(s), str(s)) for s in critical]
        + [target(f"{rate('router_e2e_seconds_sum')} / {rate('router_e2e_seconds_count')}", "e2e (mean)")],
        stacked=True,
    )
    mean["fieldConfig"]["overrides"] = [_unstacked_dashed("e2e (mean)")]
    return [*panels, (mean, WIDTH, 9)]


def _unstacked_dashed(series: str) -> dict[str, Any]:
    return {
        "matcher": {"id": "byName", "options": series},
        "properties": [
            {"id": "custom.stacking", "value": {"group": "A", "mode": "none"}},
            {"id": "custom.fillOpacity", "value": 0},
            {"id": "custom.lineStyle", "value": {"dash": [10, 10], "fill": "dash"}},
            {"id": "color", "value": {"fixedColor": "text", "mode": "fixed"}},
        ],
    }


def worker_row() -> list[Placed]:
    return [(worker_panel(service), WIDTH // len(WORKERS), 8) for service in WORKERS]


def worker_panel(service: Service) -> Panel:
    histogram = f"{service}_stage_latency_seconds"
    stages = stages_of(service)
    description = (
        f"p99 of {histogram} by stage, every {service} worker together: "
        + "; ".join(f"{s}: {STAGES[s].help}" for s in stages)
        + "."
    )
    targets = [target(quantile(0.99, histogram, stage_selector(s)), str(s)) for s in stages]
    return timeseries(f"{service}: p99 by stage", description, targets)


# The dashboard


def layout(rows: list[tuple[str, list[Placed]]]) -> list[Panel]:
    """Rows and their panels left to right, wrapping at the grid's width; ids in order."""
    panels: list[Panel] = []
    ids, y = itertools.count(1), 0
    for title, placed in rows:
        row = {"collapsed": False, "id": next(ids), "panels": [], "title": title, "type": "row"}
        panels.append({**row, "gridPos": {"h": 1, "w": WIDTH, "x": 0, "y": y}})
        x, y, line = 0, y + 1, 0
        for panel, w, h in placed:
            if x + w > WIDTH:
                x, y, line = 0, y + line, 0
            panels.append({**panel, "gridPos": {"h": h, "w": w, "x": x, "y": y}, "id": next(ids)})
            x, line = x + w, max(line, h)
        y += line
    return panels


def templating() -> dict[str, Any]:
    datasource = {
        "current": {"selected": False, "text": "${DS_PROMETHEUS}", "value": "${DS_PROMETHEUS}"},
        "hide": 0,
        "includeAll": False,
        "label": "Prometheus",
        "multi": False,
        "name": "datasource",
        "options": [],
        "query": "prometheus",
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
        "type": "datasource",
    }
    return {"list": [datasource]}


def imports() -> dict[str, Any]:
    """What Grafana's import asks for (the Prometheus data source) and what the dashboard needs."""
    inputs = [
        {
            "description": "The Prometheus that scrapes the router's and the workers' /metrics",
            "label": "Prometheus",
            "name": "DS_PROMETHEUS",
            "pluginId": "prometheus",
            "pluginName": "Prometheus",
            "type": "datasource",
        }
    ]
    requires = [
        {"id": "grafana", "name": "Grafana", "type": "grafana", "version": "10.4.0"},
        {"id": "prometheus", "name": "Prometheus", "type": "datasource", "version": "1.0.0"},
        {"id": "timeseries", "name": "Time series", "type": "panel", "version": ""},
    ]
    return {"__elements": {}, "__inputs": inputs, "__requires": requires}


def dashboard() -> dict[str, Any]:
    rows = [("Request", request_row()), ("Stages (router view)", stage_row()), ("Workers", worker_row())]
    annotation = {
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }
    return {
        **imports(),
        "annotations": {"list": [annotation]},
        "description": "epd-serve: request latency and where it goes, stage by stage (shared.timeline)",
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "panels": layout(rows),
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["epd-serve"],
        "templating": templating(),
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": "epd-serve: requests and stages",
        "uid": "epd-serve-stages",
        "version": 1,
        "weekStart": "",
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed JSON is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        stale = not OUTPUT.exists() or OUTPUT.read_text() != text
        if stale:
            print(f"{OUTPUT} is stale: run python -m deploy.grafana.make_dashboard", file=sys.stderr)
        return int(stale)
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
