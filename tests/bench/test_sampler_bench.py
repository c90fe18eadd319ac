"""``bench/sampler_bench.py`` at a toy size: every kind of parameters timed, this checkout beside a
git revision's sampler."""

from __future__ import annotations

import pytest

from bench.sampler_bench import KINDS, main

pytestmark = pytest.mark.unit


def test_sampler_bench_smoke(capsys: pytest.CaptureFixture) -> None:
    # 5d832af: the last revision whose sampler took (tokens, prompt length) pairs as histories
    argv = ["--vocab", "50", "--rows", "2", "--repeats", "1", "--history", "8"]
    assert main(["--base", "5d832af", *argv]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 50 |")]
    assert [r.split(" | ")[2] for r in rows] == [*KINDS, "penalties, 8 tokens"]
    assert all(r.endswith("x |") for r in rows)
