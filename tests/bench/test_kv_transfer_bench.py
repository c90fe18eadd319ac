"""``bench/kv_transfer_bench.py``, transport part only, at a toy size: both transports move the KV
byte-exact from this process into the spawned receiver, every mode is timed, the JSON says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.kv_transfer_bench import main

pytestmark = pytest.mark.slow


def test_transport_comparison_smoke(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "kv.json"
    argv = ["--skip-e2e", "--sizes", "256", "--repeats", "1", "--pieces", "2"]
    main([*argv, "--json", str(out)])  # 16 blocks: 1536 writes scattered, in batches of 512
    (size,) = json.loads(out.read_text())["transport"]
    assert size["tokens"] == 256 and not size["errors"]
    assert size["byte_exact"] == {m: {"zmq": "ok", "mooncake": "ok"} for m in ("whole", "scattered")}
    for mode in ("whole", "pieces", "scattered"):
        row = size["modes"][mode]
        assert row["zmq"]["gbps"] > 0 and row["mooncake"]["gbps"] > 0 and row["mooncake_over_zmq"] > 0
    assert "mooncake/zmq" in capsys.readouterr().out
