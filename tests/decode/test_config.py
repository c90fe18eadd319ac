"""Decode worker flags: the engine's flags flattened into the worker's, with the worker's defaults."""

from __future__ import annotations

import pytest

from services.decode.config import parse_config
from services.prefill.config import parse_config as parse_prefill_config
from shared.engine import EngineConfig

pytestmark = pytest.mark.unit


def test_a_decode_worker_compiles_its_decode_steps_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DECODE_COMPILE_DECODE", raising=False)  # the test suite turns it off for clusters
    monkeypatch.delenv("PREFILL_COMPILE_DECODE", raising=False)
    assert EngineConfig().compile_decode is False  # the library's default: nothing compiled unasked
    assert parse_config([]).engine.compile_decode
    assert parse_prefill_config([]).engine.compile_decode is False  # a prefill worker never decodes
    assert not parse_config(["--no-compile-decode"]).engine.compile_decode
    monkeypatch.setenv("DECODE_COMPILE_DECODE", "0")
    assert not parse_config([]).engine.compile_decode
    assert parse_config(["--compile-decode"]).engine.compile_decode  # a flag beats the environment
    # The other engine defaults are the engine's own.
    assert parse_config([]).engine.block_size == EngineConfig().block_size
