"""Tool calls in a chat answer: the ``<tool_call>`` blocks of Qwen3's chat template (the "hermes"
format) turned into OpenAI ``tool_calls``, streamed or not.

Owns the parsing of generated text, and nothing of the prompt (the chat template renders the
request's ``tools``, an assistant's ``tool_calls`` and the ``tool`` results). A model that calls a
tool writes, after any text::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

``ToolCallParser`` takes the text as it is generated and gives, per push, the content to show and
the calls completed. The whole answer in one push gives what every split of it gives (a non-streamed
answer is parsed this way too, so the stream and the answer always agree):

- text outside the blocks is content. Whitespace between content and a block, between blocks and
  after the last block is dropped; text that could still begin ``<tool_call>`` waits for the next
  push;
- a block whose body is a JSON object with a string ``name`` (and an object, a string or nothing
  as ``arguments``) is a call: ``{"id": "call_...", "type": "function", "function": {"name", "arguments"}}``,
  the arguments as a JSON string;
- any other block, and a block the answer never closes (``max_tokens`` hit inside it), stays in
  the content as written, tags included: nothing the model wrote is lost. vLLM's parser does the
  same with an answer it cannot parse.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

START, END = "<tool_call>", "</tool_call>"


@dataclass
class Parsed:
    """What one push yields: content to show and the calls completed (OpenAI's ``tool_calls`` items)."""

    content: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)


def call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def _call(body: str) -> dict[str, Any] | None:
    """The OpenAI tool call a block's body holds, or None when it holds none."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(name := obj.get("name"), str) or not name:
        return None
    args = obj.get("arguments", {})
    if isinstance(args, dict):
        arguments = json.dumps(args, ensure_ascii=False)
    elif isinstance(args, str):
        arguments = args
    else:
        return None
    return {"id": call_id(), "type": "function", "function": {"name": name, "arguments": arguments}}


def _partial_start(text: str) -> int:
    """The length of the longest end of ``text`` that begins ``<tool_call>`` (0: none)."""
    for n in range(min(len(text), len(START) - 1), 0, -1):
        if START.startswith(text[-n:]):
            return n
    return 0


class ToolCallParser:
    """Incremental: ``push`` each text delta, then ``finish`` once. ``calls`` counts the calls made."""

    def __init__(self, max_calls: int | None = None) -> None:
        """``max_calls``: calls kept (``parallel_tool_calls: false`` keeps 1); blocks past it are
        dropped, as the request asked for no more."""
        self.max_calls = max_calls
        self.calls = 0
        self._pending = ""  # text not yet shown (outside a block), or a block's body so far (inside)
        self._inside = False
        self._after_call = False  # whitespace right after a block is dropped
        self._gap = ""  # the whitespace dropped before the open block: back if it is no call

    def push(self, text: str) -> Parsed:
        out = Parsed()
        self._pending += text
        while True:
            if self._inside:
                end = self._pending.find(END)
                if end < 0:
                    return out
                body, self._pending = self._pending[:end], self._pending[end + len(END) :]
                self._inside = False
                self._block(body, out)
                continue
            if self._after_call:
                self._pending = self._pending.lstrip()
                if not self._pending:
                    return out
                self._after_call = False
            start = self._pending.find(START)
            if start >= 0:
                before = self._pending[:start].rstrip()
                out.content += before
                self._gap = self._pending[len(before) : start]
                self._pending = self._pending[start + len(START) :]
                self._inside = True
                continue
            # Show what can neither begin a block nor be whitespace before one.
            keep = _partial_start(self._pending)
            shown = self._pending[: len(self._pending) - keep].rstrip()
            out.content += shown
            self._pending = self._pending[len(shown) :]
            return out

    def finish(self) -> Parsed:
        """The rest: held text (trailing whitespace too, unless a call was made) and an unclosed block."""
        out = Parsed()
        if self._inside:
            out.content = self._gap + START + self._pending
        elif not self._after_call:
            out.content = self._pending.rstrip() if self.calls else self._pending
        self._pending, self._inside = "", False
        return out

    def _block(self, body: str, out: Parsed) -> None:
        call = _call(body)
        if call is None:  # not a call: the block stays in the content, as the model wrote it
            out.content += self._gap + START + body + END
            return
        self._after_call = True
        if self.max_calls is None or self.calls < self.max_calls:
            call["index"] = self.calls
            out.calls.append(call)
            self.calls += 1


def parse_answer(text: str, max_calls: int | None = None) -> tuple[str | None, list[dict[str, Any]]]:
    """A whole answer's content (None when only calls) and its calls, each without ``index``."""
    parser = ToolCallParser(max_calls)
    first, last = parser.push(text), parser.finish()
    content = first.content + last.content
    calls = [{k: v for k, v in c.items() if k != "index"} for c in first.calls + last.calls]
    return (content or None) if calls else content, calls
