"""``bench.compare``'s stage breakdown on synthetic per-setup stage samples: cluster and colocated
side by side, "-" for a stage one setup does not have, setups without timelines left out."""

from __future__ import annotations

import re

import pytest

from bench.compare import parse_args, stage_breakdown
from bench.compare_report import render
from shared.loadgen.client import RequestRecord
from shared.loadgen.metrics import summarize

pytestmark = pytest.mark.unit


def run(samples_ms: dict[str, list[float]] | None, n: int = 10) -> dict:
    """A loadgen run of ``n`` completed requests; request i crossed each stage with an i-th sample."""
    records = []
    for i in range(n):
        stages = None if samples_ms is None else {s: v[i] / 1000 for s, v in samples_ms.items() if i < len(v)}
        records.append(
            RequestRecord(
                i, ttft_s=0.1, itl_s=[0.01], e2e_s=0.11, completion_tokens=2, success=True, stages_s=stages
            )
        )
    return {"label": "concurrency=2", "concurrency": 2, "request_rate": None, **summarize(records, 1.0, {})}


CLUSTER = {
    "gap": [1.0] * 10,
    "kv_transfer": [float(v) for v in range(1, 11)],  # 1..10 ms
    "vision": [20.0] * 10,
    "decode": [100.0] * 10,
}
COLOCATED = {"vision": [30.0] * 10, "decode": [float(v) for v in range(101, 111)], "gap": [0.5] * 5}


def test_stage_breakdown_side_by_side() -> None:
    per_setup = {
        "cluster": run(CLUSTER)["stages_ms"],
        "colocated": run(COLOCATED)["stages_ms"],
        "transformers": run(None)["stages_ms"],
    }
    b = stage_breakdown(per_setup)
    assert list(b) == ["vision", "kv_transfer", "decode", "gap"]  # the timeline's order
    assert all(list(v) == ["cluster", "colocated"] for v in b.values())  # transformers: no timeline
    assert b["kv_transfer"]["colocated"] is None
    kv = b["kv_transfer"]["cluster"]
    assert (kv["count"], kv["p50"], kv["p99"]) == (10, pytest.approx(5.5), pytest.approx(9.91))
    dec = b["decode"]["colocated"]
    assert (dec["p50"], dec["p99"]) == (pytest.approx(105.5), pytest.approx(109.91))
    assert b["gap"]["colocated"] == {"count": 5, "p50": pytest.approx(0.5), "p99": pytest.approx(0.5)}
    assert stage_breakdown({"transformers": {}, "vllm": {}}) == {}


def result(setups: dict[str, dict]) -> dict:
    config = {
        "model": "demo", "num_requests": 10, "concurrency": 2, "images": "1", "image_size": "64x64",
        "max_tokens": "4", "ignore_eos": True, "dtype": "float32", "torch_threads": 1,
    }  # fmt: skip
    reports = {name: {"model": "demo", "runs": [r]} for name, r in setups.items()}
    stages = stage_breakdown({name: r["stages_ms"] for name, r in setups.items()})
    return {"config": config, "setups": reports, "ratios": {}, "stages": stages, "sweep": {}, "errors": {}}


def test_render_stage_table() -> None:
    text = render(result({"cluster": run(CLUSTER), "colocated": run(COLOCATED), "transformers": run(None)}))
    lines = text.splitlines()
    start = lines.index(next(ln for ln in lines if ln.startswith("stages (closed loop")))
    header, *rows = lines[start + 1 : start + 6]
    assert re.split(r"\s{2,}", header.strip()) == [
        "stage",
        *(f"{s} {p}" for s in ("cluster", "colocated") for p in ("p50", "p99")),
    ]
    table = {cells[0]: cells[1:] for ln in rows if (cells := re.split(r"\s{2,}", ln.strip()))}
    assert table == {
        "vision": ["20.0", "20.0", "30.0", "30.0"],
        "kv_transfer": ["5.5", "9.9", "-", "-"],
        "decode": ["100.0", "100.0", "105.5", "109.9"],
        "gap": ["1.0", "1.0", "0.5", "0.5"],
    }
    assert lines[start + 6] == "answers with a timeline: cluster 10/10, colocated 10/10, transformers 0/10"


def test_render_without_timelines_has_no_stage_table() -> None:
    text = render(result({"colocated": run(None), "transformers": run(None)}))
    assert "stages" not in text and "timeline" not in text
    old = result({"cluster": run(None)})
    del old["stages"]  # a result written before stage breakdowns
    assert "stages" not in render(old)


def test_the_temperature_flag_reaches_the_load() -> None:
    """vllm bench serve's loads sample (temperature 1); bench.compare's can too, greedy by default."""
    assert parse_args([]).load("http://x/v1").temperature == 0.0
    assert parse_args(["--temperature", "1"]).load("http://x/v1").temperature == 1.0
