"""Reading an OpenAI-style server-sent-event stream of chat chunks, shared by the client and Locust.

Only ``data:`` lines matter; comments (``:``), ``event:``/``id:`` lines and blank separators are
skipped. ``[DONE]`` ends the stream. A chunk "carries content" when its first choice's delta has
non-empty ``content`` (or reasoning text, which servers stream in ``reasoning_content`` /
``reasoning``); those are the chunks TTFT and inter-token gaps are timed on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

DONE = "[DONE]"


@dataclass
class Chunk:
    """What one ``data:`` event says: content or not, usage, a server-reported error."""

    content: str = ""
    usage: dict | None = None
    error: str | None = None
    done: bool = False


def parse_line(line: str | bytes) -> Chunk | None:
    """One line of the stream -> a ``Chunk``, or None for lines that carry no event."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    line = line.strip()
    if not line.startswith("data:"):
        return None
    payload = line[5:].strip()
    if payload == DONE:
        return Chunk(done=True)
    try:
        data = json.loads(payload)
    except json.JSONDecodeError:
        return Chunk(error=f"malformed event: {payload[:200]}")
    if not isinstance(data, dict):
        return Chunk(error=f"malformed event: {payload[:200]}")
    if "error" in data:
        err = data["error"]
        return Chunk(error=str(err.get("message", err) if isinstance(err, dict) else err))
    text = ""
    if choices := data.get("choices"):
        delta = choices[0].get("delta") or {}
        text = delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning") or ""
        text = text or choices[0].get("text") or ""  # /v1/completions chunks
    return Chunk(content=text, usage=data.get("usage"))
