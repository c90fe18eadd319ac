"""``bench/curve_bench.py`` at a toy size: both flows move plain and with Curve into the spawned
receiver, and the ratio is printed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.curve_bench import main

pytestmark = pytest.mark.slow


def test_curve_bench_smoke(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "curve.json"
    main(["--repeats", "1", "--embeddings", "1", "--kv-tokens", "64", "--json", str(out)])
    results = json.loads(out.read_text())
    assert set(results) == {"embedding", "kv"} and results["embedding"]["message_mib"] == 16.0
    for row in results.values():
        assert row["gib_per_s"]["plain"] > 0 and row["gib_per_s"]["curve"] > 0 and row["curve_over_plain"] > 0
    assert "curve/plain" in capsys.readouterr().out
