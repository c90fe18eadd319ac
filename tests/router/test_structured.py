"""Structured outputs in the router (``router.structured``): what a request may ask of its answer's
shape, as the expression the engine holds it to; what matches the expression is what was asked."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from router.protocol import APIError, ChatCompletionRequest, CompletionRequest
from router.structured import escape, guide_for
from router.tool_calls import parse_answer

pytestmark = pytest.mark.unit

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CLOCK = {"type": "function", "function": {"name": "time.now"}}  # no parameters: any object


def chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], **fields}
    )


def matches(expr: str, text: str) -> bool:
    return re.fullmatch(expr, text) is not None


def refused(param: str, **fields: Any) -> str:
    with pytest.raises(APIError) as e:
        guide_for(chat(**fields))
    assert e.value.status == 400 and e.value.param.startswith(param), e.value.param
    return e.value.message


def test_json_answers():
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}, "ok": {"type": "boolean"}},
        "required": ["n", "ok"],
    }
    expr = guide_for(
        chat(response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}})
    )
    assert matches(expr, '{"n": 12, "ok": true}') and matches(expr, '{"n":-3,"ok":false}')
    assert not matches(expr, '{"ok": true, "n": 12}') and not matches(expr, '{"n": 1.5, "ok": true}')
    assert guide_for(chat(structured_outputs={"json": schema})) == expr
    assert guide_for(chat(structured_outputs={"json": json.dumps(schema)})) == expr  # vLLM takes a string too
    obj = guide_for(chat(response_format={"type": "json_object"}))
    assert matches(obj, '{"a": [1, {"b": null}], "c": "d"}') and not matches(obj, "[1]")
    assert guide_for(chat(response_format={"type": "text"})) == guide_for(chat()) == ""
    completion = CompletionRequest.model_validate(
        {"model": "m", "prompt": "x", "structured_outputs": {"json": schema}}
    )
    assert guide_for(completion) == expr


def test_regex_and_choice():
    assert guide_for(chat(structured_outputs={"regex": "[a-c]{2}"})) == "[a-c]{2}"
    choice = guide_for(chat(structured_outputs={"choice": ["yes", "no (1.5$)", "a|b"]}))
    assert [c for c in ("yes", "no (1.5$)", "a|b", "a", "no") if matches(choice, c)] == [
        "yes",
        "no (1.5$)",
        "a|b",
    ]
    assert escape("a.b*c") == "a\\.b\\*c"


def test_what_cannot_be_asked():
    assert "one of json, regex or choice" in refused(
        "structured_outputs", structured_outputs={"regex": "a", "choice": ["b"]}
    )
    refused("structured_outputs", structured_outputs={})
    refused("structured_outputs.choice", structured_outputs={"choice": []})
    refused("structured_outputs.json", structured_outputs={"json": "{not json"})
    refused("response_format", response_format={"type": "yaml"})
    refused("response_format.json_schema", response_format={"type": "json_schema"})
    bad_ref = {"type": "object", "properties": {"x": {"$ref": "#/nowhere"}}}
    assert "cannot be used" in refused(
        "response_format", response_format={"type": "json_schema", "json_schema": {"schema": bad_ref}}
    )
    assert "exclude each other" in refused(
        "response_format", response_format={"type": "json_object"}, structured_outputs={"regex": "a"}
    )
    assert "not in tools" in refused(
        "tool_choice", tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}}
    )


def call(name: str, arguments: str) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>'


def test_forced_tool_calls_are_blocks_the_parser_reads():
    named = guide_for(
        chat(tools=[WEATHER, CLOCK], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    )
    one = call("get_weather", '{"city": "Bern"}')
    assert matches(named, one) and not matches(named, call("time.now", "{}"))
    assert not matches(named, call("get_weather", '{"town": "Bern"}')) and not matches(
        named, one + "\n" + one
    )
    content, calls = parse_answer(one)
    assert content is None and calls[0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city": "Bern"}',
    }
    required = guide_for(chat(tools=[WEATHER, CLOCK], tool_choice="required"))
    two = one + "\n" + call("time.now", '{"tz": "UTC"}')
    assert matches(required, one) and matches(required, two) and not matches(required, "Sure.")
    assert [c["function"]["name"] for c in parse_answer(two)[1]] == ["get_weather", "time.now"]
    single = guide_for(chat(tools=[WEATHER, CLOCK], tool_choice="required", parallel_tool_calls=False))
    assert matches(single, one) and not matches(single, two)
    assert guide_for(chat(tools=[WEATHER], tool_choice="auto")) == guide_for(chat(tools=[WEATHER])) == ""
    refused("tool_choice", tool_choice="required")  # no tools
