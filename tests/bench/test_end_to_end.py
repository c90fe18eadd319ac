"""The load generator and the Locust file against a real local cluster on the tiny checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.loadgen import LoadConfig, run
from shared.loadgen.cli import main
from shared.loadgen.table import summary_table
from tests.cluster import EpdCluster
from tests.repo import REPO_ROOT

pytestmark = pytest.mark.cluster

STATS = ("mean", "median", "p50", "p90", "p99", "std", "min", "max")
RUN_KEYS = (
    "completed", "failed", "errors", "duration_s", "request_throughput", "input_token_throughput",
    "output_token_throughput", "total_token_throughput", "ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "goodput",
)  # fmt: skip


def check_run(entry: dict, n: int, max_tokens: int) -> None:
    assert all(k in entry for k in RUN_KEYS), sorted(entry)
    assert (entry["completed"], entry["failed"], entry["errors"]) == (n, 0, {}), entry["errors"]
    assert entry["duration_s"] > 0 and entry["request_throughput"] > 0
    assert entry["output_token_throughput"] == pytest.approx(
        entry["total_output_tokens"] / entry["duration_s"]
    )
    assert entry["total_output_tokens"] == n * max_tokens and entry["total_input_tokens"] > 0
    assert entry["total_token_throughput"] > entry["output_token_throughput"] > 0
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        s = entry[key]
        assert set(STATS) <= set(s) and 0 < s["min"] <= s["p50"] <= s["p90"] <= s["p99"] <= s["max"], (key, s)
    assert entry["ttft_ms"]["max"] <= entry["e2e_ms"]["max"]
    g = entry["goodput"]
    assert g["good_requests"] <= n and 0 <= g["fraction"] <= 1
    for r in entry["records"]:
        assert r["success"] and r["completion_tokens"] == max_tokens and r["usage_reported"]
        assert 0 < r["ttft_s"] <= r["e2e_s"] and len(r["itl_s"]) == r["content_chunks"] - 1
        assert r["prompt_tokens"] > 0 and r["n_images"] == 1
    assert entry["timelines"] in (0, n)  # every answer carries the router's timeline, or none yet
    if entry["timelines"]:
        assert entry["stages_ms"]["gap"]["count"] == n and all(r["stages_s"] for r in entry["records"])


def test_loadgen_closed_loop_and_sweep(cluster: EpdCluster, tmp_path: Path) -> None:
    common = dict(
        base_url=cluster.url + "/v1", images="1", image_size="64x64", max_tokens="8", ignore_eos=True,
        prompt_words="4-8", slo={"ttft": 60_000, "tpot": 60_000, "e2e": 60_000}, progress=False, timeout=120,
    )  # fmt: skip
    closed = run(LoadConfig(concurrency=2, num_requests=8, warmup=1, out=str(tmp_path / "c.json"), **common))
    print(summary_table(closed))
    assert closed["model"] == cluster.model and closed["warmup"]["failed"] == 0
    assert (
        set(closed["environment"]) >= {"host", "cpu_count", "time"} and closed["config"]["concurrency"] == 2
    )
    (entry,) = closed["runs"]
    assert entry["concurrency"] == 2 and entry["label"] == "concurrency=2"
    check_run(entry, 8, 8)
    assert entry["goodput"]["fraction"] == 1.0
    assert json.loads((tmp_path / "c.json").read_text())["runs"][0]["completed"] == 8
    assert closed["images_generated"] == 9  # one per request, warmup included: all distinct

    sweep = run(LoadConfig(request_rate="2,inf", num_requests=4, plots=str(tmp_path / "plots"), **common))
    print(summary_table(sweep))
    summary = {k: v for k, v in sweep["runs"][1].items() if k != "records"}
    print(json.dumps(summary, indent=1))
    assert [r["request_rate"] for r in sweep["runs"]] == [2.0, "inf"]
    for entry in sweep["runs"]:
        check_run(entry, 4, 8)
    for name in ("latency_cdf.png", "sweep.png"):
        png = tmp_path / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_cli(cluster: EpdCluster, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "r.json"
    argv = [
        "--base-url", cluster.url + "/v1", "--concurrency", "1", "--num-requests", "2", "--image-size", "32x32",
        "--max-tokens", "2", "--no-progress", "--no-records", "--out", str(out), "--slo", "ttft:60000",
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "concurrency=1" in printed and "TTFT mean/p50/p99 (ms)" in printed and f"wrote {out}" in printed
    report = json.loads(out.read_text())
    assert report["runs"][0]["completed"] == 2 and "records" not in report["runs"][0]
    assert report["config"]["slo"] == {"ttft": 60000.0} and report["config"]["keep_records"] is False


def test_locust_headless(cluster: EpdCluster, tmp_path: Path) -> None:
    env = {"LOADGEN_IMAGE_SIZE": "64x64", "LOADGEN_MAX_TOKENS": "4", "LOADGEN_IGNORE_EOS": "1"}
    cmd = [
        sys.executable, "-m", "locust", "-f", "bench/locustfile.py", "--headless", "-u", "2", "-r", "2",
        "-t", "6s", "--host", cluster.url, "--json", "--skip-log", "--exit-code-on-error", "1",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=REPO_ROOT, env=os.environ | env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stats = {s["name"]: s for s in json.loads(proc.stdout)}
    print({k: (s["num_requests"], s["num_failures"]) for k, s in stats.items()})
    assert stats["chat e2e"]["num_requests"] >= 2 and stats["chat e2e"]["num_failures"] == 0
    assert stats["chat ttft"]["num_requests"] >= 2
    assert stats["chat ttft"]["total_response_time"] < stats["chat e2e"]["total_response_time"]
