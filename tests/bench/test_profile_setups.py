"""``bench.profile_setups``: CPU per request by process and by kind of work, from /proc and py-spy."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from bench.profile_setups import category, main, summarize


@pytest.mark.unit
def test_samples_are_sorted_into_kinds_of_work(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text(
        "main (services/decode/__main__.py:5);Engine.step (shared/engine/engine.py:9);mm (torch/nn/x.py:1) 6\n"
        "main (services/decode/__main__.py:5);send (shared/wire/sockets.py:3);send (zmq/sugar/socket.py:2) 3\n"
        "main (services/decode/__main__.py:5);wait (shared/wire/poll.py:4);select (selectors.py:1) 10\n"
        "main (services/decode/__main__.py:5) 1\n"
    )
    s = summarize(raw, top=5)
    assert s["samples"] == 20
    assert s["busy_shares"] == {
        "model and engine": 0.6,
        "messaging: ZMQ, codec, KV transfer": 0.3,
        "service loops": 0.1,
    }
    assert s["self"][0] == ("select (selectors.py)", 50.0)
    assert ("Engine.step (shared/engine/engine.py)", 30.0) in s["inclusive"]
    assert category(["f (some/lib.py:1)"]) == "other"


@pytest.mark.cluster
def test_profile_a_colocated_server(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent))
    argv = [
        "--setups", "colocated", "--model", str(ckpt), "--num-requests", "6", "--concurrency", "2",
        "--image-size", "64x64", "--max-tokens", "4", "--warmup", "1", "--out-dir", str(tmp_path),
        "--colocated-flags=--router-arg=--max-model-len=4096 --router-arg=--num-blocks=512",
        *(["--py-spy", spy] if spy else ["--no-py-spy"]),
    ]  # fmt: skip
    assert main(argv) == 0
    print(capsys.readouterr().out)
    result = json.loads((tmp_path / "profile.json").read_text())["setups"]["colocated"]
    assert result["completed"] == 6 and result["cpu_ms_per_request"]["router"] > 0
    assert result["cpu_ms_per_request"]["load generator"] > 0
    steps = result["engine_steps"]["router"]
    assert steps["steps"] > 0 and 1 <= steps["tokens_per_step"] <= 2 and steps["ms_per_step"] > 0
    if spy:
        assert result["stacks"]["router"]["samples"] > 0
