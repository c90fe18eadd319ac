"""The overhead tools: ``bench.ab``'s per-module CPU accounting of a process session,
``bench.tree_cpu``'s of a process tree, and ``bench.timeline_cost`` timing the timeline's
per-request work on the real code."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.ab import cpu_seconds
from bench.timeline_cost import main as timeline_cost
from bench.tree_cpu import per_request, snapshot

pytestmark = pytest.mark.unit


def test_cpu_seconds_counts_the_session_by_module(tmp_path: Path) -> None:
    (tmp_path / "spinner.py").write_text(
        "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\ntime.sleep(60)\n"
    )
    (tmp_path / "outsider.py").write_text("import time\ntime.sleep(60)\n")
    spinner = subprocess.Popen([sys.executable, "-m", "spinner"], cwd=tmp_path, start_new_session=True)
    outsider = subprocess.Popen([sys.executable, "-m", "outsider"], cwd=tmp_path)  # this session
    try:
        deadline = time.monotonic() + 30
        while cpu_seconds(spinner.pid).get("spinner", 0.0) < 0.25 and time.monotonic() < deadline:
            time.sleep(0.1)
        used = cpu_seconds(spinner.pid)
    finally:
        for p in (spinner, outsider):
            p.kill()
            p.wait()
    assert set(used) == {"spinner"}  # only the session's processes, by the module after -m
    assert 0.25 <= used["spinner"] < 5


def test_tree_cpu_counts_a_process_and_its_descendants(tmp_path: Path) -> None:
    (tmp_path / "spinner.py").write_text(
        "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\ntime.sleep(60)\n"
    )
    (tmp_path / "parent.py").write_text(
        "import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-m', 'spinner'])\ntime.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-m", "parent"], cwd=tmp_path, start_new_session=True)
    try:
        before = {}  # the spinner's whole life
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            used = per_request(before, snapshot(parent.pid), requests=2)
            if any(k.endswith(" spinner") and ms >= 125 for k, ms in used.items()):
                break
            time.sleep(0.1)
    finally:
        subprocess.run(["pkill", "-KILL", "-s", str(parent.pid)], check=False)
        parent.wait()
    names = sorted(k.split(" ", 1)[1] for k in used if k != "total")
    assert names == ["parent", "spinner"] or names == ["spinner"], used  # the parent may round to 0
    spinner = next(ms for k, ms in used.items() if k.endswith(" spinner"))
    assert 125 <= spinner < 2500 and used["total"] >= spinner  # 0.3 s over 2 requests: ~150 ms each


def test_timeline_cost_prints_each_piece(capsys: pytest.CaptureFixture[str]) -> None:
    assert timeline_cost(["--seconds", "0.05"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("  ")[1].strip(): line for line in out.splitlines() if line.endswith(" us")}
    assert {"total"} < set(rows) and len(rows) == 4, out
    total = float(rows["total"].split()[-2])
    assert 0 < total < 100_000, out
