"""Sampling defaults from the model's generation_config.json (``router.sampling_defaults``): a field
the request leaves out takes the model's value, one it sets keeps its own, ``none`` keeps OpenAI's."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.images import FetchLimits
from router.prepare import Preparer
from router.protocol import ChatCompletionRequest, CompletionRequest
from router.sampling_defaults import load_sampling_defaults
from shared.engine import SamplingParams

pytestmark = pytest.mark.unit

DEMO = Path(__file__).resolve().parents[2] / "shared" / "assets" / "demo"
QWEN3_VL = {
    "do_sample": True,
    "temperature": 0.7,
    "top_p": 0.8,
    "top_k": 20,
    "repetition_penalty": 1.05,
    "max_new_tokens": 64,
    "eos_token_id": [514],
}


def checkpoint(tmp_path: Path, generation_config: Any) -> Path:
    """The demo checkpoint's files, with this generation_config.json (None: no file)."""
    for f in DEMO.iterdir():
        if f.name != "generation_config.json":
            (tmp_path / f.name).symlink_to(f)
    if generation_config is not None:
        text = generation_config if isinstance(generation_config, str) else json.dumps(generation_config)
        (tmp_path / "generation_config.json").write_text(text)
    return tmp_path


def params(ckpt: Path, mode: str = "auto", **fields: Any) -> SamplingParams:
    prep = Preparer(
        ckpt, "demo", None, 4, FetchLimits(), sampling_defaults=load_sampling_defaults(ckpt, mode)
    )
    req = ChatCompletionRequest(model="demo", messages=[{"role": "user", "content": "hi"}], **fields)

    async def prepare():
        async with httpx.AsyncClient() as client:
            return await prep.chat(req, client)

    return asyncio.run(prepare()).params


def test_a_field_left_out_takes_the_models_value(tmp_path: Path):
    p = params(checkpoint(tmp_path, QWEN3_VL))
    assert (p.temperature, p.top_p, p.top_k, p.min_p, p.max_tokens) == (0.7, 0.8, 20, 0.0, 64)
    assert (p.repetition_penalty, p.presence_penalty, p.frequency_penalty) == (1.05, 0.0, 0.0)


def test_a_field_the_request_sets_keeps_its_value(tmp_path: Path):
    ckpt = checkpoint(tmp_path, QWEN3_VL)
    p = params(ckpt, temperature=1.0, top_k=-1, max_tokens=5)  # OpenAI's own default values, set
    assert (p.temperature, p.top_p, p.top_k, p.max_tokens) == (1.0, 0.8, 0, 5)
    assert params(ckpt, temperature=0).greedy


def test_mode_none_and_no_file_keep_openais_defaults(tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for p in (params(checkpoint(tmp_path / "a", QWEN3_VL), "none"), params(checkpoint(tmp_path / "b", None))):
        assert (p.temperature, p.top_p, p.top_k, p.min_p) == (1.0, 1.0, 0, 0.0)
        assert p.max_tokens > 64  # the context's room


def test_values_out_of_bounds_or_a_broken_file_are_not_served(tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    odd = {
        "temperature": 5,
        "top_p": 0,
        "top_k": 20,
        "min_p": "x",
        "max_new_tokens": 0,
        "repetition_penalty": 0,
    }
    assert load_sampling_defaults(checkpoint(tmp_path / "a", odd)) == {"top_k": 20}
    assert load_sampling_defaults(checkpoint(tmp_path / "b", "{not json")) == {}


def test_the_models_cap_stays_within_the_context(tmp_path: Path):
    ckpt = checkpoint(tmp_path, {"max_new_tokens": 10**9})
    prep = Preparer(ckpt, "demo", 200, 4, FetchLimits(), sampling_defaults=load_sampling_defaults(ckpt))
    req = CompletionRequest(model="demo", prompt="hello there", max_tokens=None)
    assert 0 < asyncio.run(prep.completions(req))[0].params.max_tokens < 200
