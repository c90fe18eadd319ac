"""Structured outputs: what a request asks its answer to be, as the regular expression the engine
holds it to (``SamplingParams.guide``; ``shared.engine.guided``).

Owns the translation and its 400s. What can be asked:

- ``response_format``: ``{"type": "json_object"}`` (any JSON object) or ``{"type": "json_schema",
  "json_schema": {"name": ..., "schema": {...}}}`` (OpenAI's);
- ``structured_outputs``: ``{"json": schema}``, ``{"regex": "..."}`` or ``{"choice": [...]}``
  (vLLM's field: one of them);
- a forced tool call, chat only: ``tool_choice`` ``"required"`` (one call or more, of any of the
  tools; one with ``parallel_tool_calls: false``) or a named function (one call of it), written
  as the chat template's ``<tool_call>`` blocks, which ``router.tool_calls`` parses back.

At most one of them per request. A JSON schema becomes an expression through outlines-core (the
same library the engine's automata come from): objects keep their properties in the schema's
order, with at most one space around the punctuation; nesting without a schema (``json_object``,
an object without properties) is bounded in depth. An expression the vocabulary cannot follow is
the prefill worker's 400 (it compiles it first).
"""

from __future__ import annotations

import json
from typing import Any

from outlines_core import json_schema

from router.protocol import ChatCompletionRequest, SamplingFields, bad_request
from router.tool_calls import END as TOOL_CALL_END
from router.tool_calls import START as TOOL_CALL_START
from shared.wire.messages.prefill import MAX_GUIDE_CHARS

_META = set("\\.+*?()|[]{}^$#&-~")


def escape(text: str) -> str:
    """``text`` as a literal of the engine's regular expressions."""
    return "".join("\\" + c if c in _META else c for c in text)


def schema_expression(schema: Any, param: str) -> str:
    if not isinstance(schema, dict | bool):
        raise bad_request("a JSON schema is an object", param)
    try:
        return json_schema.build_regex_from_schema(json.dumps(schema))
    except (ValueError, TypeError) as e:
        raise bad_request(f"the JSON schema cannot be used: {e}", param) from None


def _response_format(value: dict[str, Any]) -> str | None:
    kind = value.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return schema_expression({"type": "object"}, "response_format")
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or "schema" not in spec:
            raise bad_request('json_schema: {"name": ..., "schema": {...}}', "response_format.json_schema")
        return schema_expression(spec["schema"], "response_format.json_schema.schema")
    raise bad_request(f"response_format type {kind!r}: text, json_object or json_schema", "response_format")


def _structured_outputs(value: dict[str, Any]) -> str:
    asked = [k for k in ("json", "regex", "choice") if value.get(k) is not None]
    if len(asked) != 1:
        raise bad_request("structured_outputs: one of json, regex or choice", "structured_outputs")
    kind, spec = asked[0], value[asked[0]]
    param = f"structured_outputs.{kind}"
    if kind == "json":
        if isinstance(spec, str):
            try:
                spec = json.loads(spec)
            except ValueError:
                raise bad_request("the JSON schema is not JSON", param) from None
        return schema_expression(spec, param)
    if kind == "regex":
        if not isinstance(spec, str) or not spec:
            raise bad_request("a regular expression (a non-empty string)", param)
        return spec
    if not isinstance(spec, list) or not spec or not all(isinstance(c, str) and c for c in spec):
        raise bad_request("a list of non-empty strings", param)
    return "(" + "|".join(escape(c) for c in spec) + ")"


def _tool_call(tool: Any) -> str:
    """One ``<tool_call>`` block of this tool: its name, and arguments that follow its parameters."""
    f = tool.function
    schema = {
        "type": "object",
        "properties": {"name": {"const": f.name}, "arguments": f.parameters or {"type": "object"}},
        "required": ["name", "arguments"],
    }
    body = schema_expression(schema, "tools")
    return f"{escape(TOOL_CALL_START)}\n{body}\n{escape(TOOL_CALL_END)}"


def _forced_calls(req: ChatCompletionRequest) -> str | None:
    choice = req.tool_choice
    if choice is None or isinstance(choice, str) and choice in ("none", "auto"):
        return None
    tools = req.tools or []
    if not isinstance(choice, str):  # a named function: one call of it
        named = [t for t in tools if t.function.name == choice.function.name]
        if not named:
            raise bad_request(
                f"tool_choice names {choice.function.name!r}, which is not in tools", "tool_choice"
            )
        return _tool_call(named[0])
    if not tools:
        raise bad_request('tool_choice "required" needs tools', "tool_choice")
    one = "(" + "|".join(_tool_call(t) for t in tools) + ")"
    return one if not req.parallel_tool_calls else f"{one}(\n{one})*"


def guide_for(req: SamplingFields) -> str:
    """The expression ``req`` holds its answer to ("": none); a 400 for what cannot be kept."""
    guides = []
    if req.response_format is not None and (expr := _response_format(req.response_format)) is not None:
        guides.append(expr)
    if req.structured_outputs is not None:
        guides.append(_structured_outputs(req.structured_outputs))
    if isinstance(req, ChatCompletionRequest) and (expr := _forced_calls(req)) is not None:
        guides.append(expr)
    if len(guides) > 1:
        raise bad_request(
            "response_format, structured_outputs and a forced tool call exclude each other", "response_format"
        )
    if guides and len(guides[0]) > MAX_GUIDE_CHARS:
        raise bad_request(
            f"the output's structure is too large ({len(guides[0])} > {MAX_GUIDE_CHARS})", "response_format"
        )
    return guides[0] if guides else ""
