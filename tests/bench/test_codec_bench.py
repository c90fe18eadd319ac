"""``bench/codec_bench.py`` at a toy size: every message of a request's hops is timed both ways."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.codec_bench import main, messages

pytestmark = pytest.mark.unit


def test_codec_bench_smoke(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "codec.json"
    assert main(["--calls", "3", "--repeats", "1", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results) == set(messages())
    for row in results.values():
        assert set(row) == {"encode_us", "encode_unchecked_us", "decode_us"} and all(
            v > 0 for v in row.values()
        )
    assert "KVReserve" in capsys.readouterr().out
