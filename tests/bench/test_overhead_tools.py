"""The overhead tools: ``bench.ab``'s per-module CPU accounting of a process session, and
``bench.timeline_cost`` timing the timeline's per-request work on the real code."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.ab import cpu_seconds
from bench.timeline_cost import main as timeline_cost

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


def test_timeline_cost_prints_each_piece(capsys: pytest.CaptureFixture[str]) -> None:
    assert timeline_cost(["--seconds", "0.05"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("  ")[1].strip(): line for line in out.splitlines() if line.endswith(" us")}
    assert {"total"} < set(rows) and len(rows) == 4, out
    total = float(rows["total"].split()[-2])
    assert 0 < total < 100_000, out
