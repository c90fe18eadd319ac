"""What the router writes (``router.responses``, ``router.protocol``): SSE events and JSON bodies
as the ``openai`` client parses them, and logprobs that stay valid JSON."""

from __future__ import annotations

import json
import math

import pytest

from router.generate import TokenLogprob
from router.protocol import chat_chunk, chat_logprobs, legacy_logprobs
from router.responses import JSONResponse, _event, dumps

pytestmark = pytest.mark.unit


def test_sse_events_are_what_the_stdlib_wrote() -> None:
    chunk = chat_chunk("chatcmpl-1", "m", {"content": 'héllo 世界 🎉 "q" \\ \n'}, "stop")
    chunk["timeline"] = {"total": 0.25, "stages": {"encode": 1e-05}}
    event = _event(chunk)
    assert event.startswith(b"data: {") and event.endswith(b"}\n\n") and b"\n" not in event[:-2]
    assert json.loads(event[6:]) == chunk
    assert "世界 🎉".encode() in event  # UTF-8, not \u escapes (ensure_ascii=False)
    stdlib = json.dumps(chunk, ensure_ascii=False, separators=(",", ":")).encode()
    assert event == b"data: " + stdlib.replace(b"1e-05", b"0.00001") + b"\n\n"  # same floats, spelled so


def test_keys_that_are_not_strings_are_written_as_json_dumps_writes_them() -> None:
    obj = {1: "a", "b": {2.5: True}}
    assert json.loads(dumps(obj)) == json.loads(json.dumps(obj))


def test_json_response_renders_with_orjson() -> None:
    r = JSONResponse({"a": "é", "n": [1, 2.5, None]}, status_code=201)
    assert r.body == '{"a":"é","n":[1,2.5,null]}'.encode() and r.status_code == 201
    assert r.headers["content-type"] == "application/json"


def test_infinite_logprobs_stay_valid_json() -> None:
    lps = [TokenLogprob("a", -math.inf, [("a", -math.inf), ("b", -0.5)]), TokenLogprob("c", math.nan)]
    chat = json.loads(dumps(chat_logprobs(lps)), parse_constant=pytest.fail)
    assert [t["logprob"] for t in chat["content"]] == [-9999.0, -9999.0]
    assert [t["logprob"] for t in chat["content"][0]["top_logprobs"]] == [-9999.0, -0.5]
    legacy = json.loads(dumps(legacy_logprobs(lps)), parse_constant=pytest.fail)
    assert legacy["token_logprobs"] == [-9999.0, -9999.0]
    assert legacy["top_logprobs"] == [{"a": -9999.0, "b": -0.5}, {}]
