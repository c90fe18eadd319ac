"""``bench.compare``: the three setups started one after another on the tiny checkpoint, the same load
against each, ratios between them; and a server that does not start fails clearly."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench.compare import PAIRS, RATIO_FIGURES, SETUPS, main
from bench.servers import Server, ServerError, serve

pytestmark = pytest.mark.cluster


def test_compare_three_setups(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "compare.json"
    argv = [
        "--model", str(ckpt), "--setups", "cluster,colocated,transformers", "--num-requests", "4",
        "--concurrency", "2", "--images", "1", "--image-size", "64x64", "--max-tokens", "4", "--warmup", "1",
        "--request-rates", "4", "--sweep-setups", "cluster", "--prompt-words", "4-8", "--no-progress",
        # Two cores run four services and the load generator here: a worker can be silent for seconds.
        "--cluster-flags=--router-arg=--heartbeat-timeout-s=15 --router-arg=--max-model-len=4096",
        "--colocated-flags=--router-arg=--max-model-len=4096 --router-arg=--num-blocks=512",
        "--log-dir", str(tmp_path / "logs"), "--out", str(out), "--plots", str(tmp_path / "plots"),
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    print(printed)
    result = json.loads(out.read_text())
    assert result["errors"] == {} and list(result["setups"]) == list(SETUPS)
    assert set(result["ready_seconds"]) == set(SETUPS) and all(
        t > 0 for t in result["ready_seconds"].values()
    )
    for name, report in result["setups"].items():
        (run,) = report["runs"]
        assert (run["completed"], run["failed"], run["concurrency"]) == (4, 0, 2), name
        assert run["total_output_tokens"] == 16 and report["warmup"]["failed"] == 0
        assert f"\n{name} " in printed
    prompts = {
        name: [r["prompt_tokens"] for r in report["runs"][0]["records"]]
        for name, report in result["setups"].items()
    }
    assert prompts["cluster"] == prompts["colocated"] == prompts["transformers"]  # the same requests
    assert set(result["ratios"]) == {f"{a}/{b}" for a, b in PAIRS}
    for values in result["ratios"].values():
        assert set(values) == set(RATIO_FIGURES) and all(v > 0 for v in values.values())
    stages = {s for report in result["setups"].values() for s in report["runs"][0]["stages_ms"]}
    assert set(result["stages"]) == stages  # empty until the servers send timelines
    assert not any("transformers" in per_setup for per_setup in result["stages"].values())
    (run,) = result["sweep"]["cluster"]["runs"]
    assert list(result["sweep"]) == ["cluster"] and run["request_rate"] == 4.0 and run["completed"] == 4
    env = result["environment"]
    assert env["cpu_model"] and env["torch"] and env["hostname"] and env["cpu_count"] >= 1
    assert "cluster/transformers" in printed and "Poisson sweep" in printed
    for name in ("latency_cdf.png", "sweep_cluster.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG"


def test_server_that_does_not_start(tmp_path: Path) -> None:
    cmd = (sys.executable, "-c", "print('loading the model'); raise SystemExit(3)")
    with (
        pytest.raises(ServerError, match="exited with status 3") as info,
        serve(Server("bad", cmd), tmp_path),
    ):
        pass
    assert "loading the model" in str(info.value)
    silent = Server("silent", (sys.executable, "-c", "import time; time.sleep(60)"), timeout=0.5)
    with pytest.raises(ServerError, match="not ready after"), serve(silent, tmp_path):
        pass
