"""Configuration: flags over environment over defaults; bad values are refused at the entry point."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.encoder.config import parse_config
from shared.assets import DEMO_MODEL_DIR as MODEL_DIR

pytestmark = pytest.mark.unit


def test_defaults_flags_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = parse_config(["--model", "/m"])
    assert cfg.model == Path("/m") and cfg.device == "cpu" and cfg.cross_request_batching
    assert (
        cfg.batch_patches == 4096
        and parse_config(["--model", "/m", "--device", "cuda"]).batch_patches == 16384
    )
    monkeypatch.setenv("ENCODER_PATCH_BUDGET", "123")
    monkeypatch.setenv("ENCODER_MODEL", "/from-env")
    monkeypatch.setenv("ENCODER_CROSS_REQUEST_BATCHING", "0")
    cfg = parse_config([])
    assert (cfg.model, cfg.patch_budget, cfg.cross_request_batching) == (Path("/from-env"), 123, False)
    cfg = parse_config(["--patch-budget", "7", "--cross-request-batching", "--dtype", "bfloat16"])
    assert (cfg.patch_budget, cfg.cross_request_batching, cfg.dtype) == (7, True, "bfloat16")
    assert parse_config(["--port", "0", "--host", "0.0.0.0"]).bind_address == "tcp://0.0.0.0:0"


@pytest.mark.parametrize(
    "argv", [["--dtype", "int8"], ["--device", "tpu"], ["--patch-budget", "-1"], ["--port", "x"]]
)
def test_bad_values_exit(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_config(["--model", "/m", *argv])


def test_model_defaults_to_the_bundled_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENCODER_MODEL", raising=False)
    assert parse_config([]).model == MODEL_DIR and (MODEL_DIR / "config.json").is_file()


def test_a_bad_environment_value_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCODER_PATCH_BUDGET", "lots")
    with pytest.raises(SystemExit):
        parse_config(["--model", "/m"])
