"""Reading an OpenAI-style server-sent-event stream of chat chunks, shared by the client and Locust.

Only ``data:`` lines matter; comments (``:``), ``event:``/``id:`` lines and blank separators are
skipped. ``[DONE]`` ends the stream. A chunk "carries content" when its first choice's delta has
non-empty ``content`` (or reasoning text, which servers stream in ``reasoning_content`` /
``reasoning``); those are the chunks TTFT and inter-token gaps are timed on.

A server may add a ``timeline`` object (epd's router does: in the chunk that carries the
``finish_reason``, or at the top level of a non-streamed answer); its ``stages`` map (stage name ->
seconds) is kept as ``Chunk.stages``. Servers that send none (vLLM, older epd) give ``None``.
``parse_completion`` reads a whole non-streamed answer into the same ``Chunk``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

DONE = "[DONE]"


@dataclass
class Chunk:
    """What one ``data:`` event (or a whole non-streamed answer) says: content or not, usage, a
    server-reported error, the timeline's stages (None: the event carried no timeline)."""

    content: str = ""
    usage: dict | None = None
    error: str | None = None
    done: bool = False
    stages: dict[str, float] | None = None


def timeline_stages(data: dict) -> dict[str, float] | None:
    """``data["timeline"]["stages"]`` as stage -> seconds; None when there is no ``timeline`` object.
    Values that are not finite numbers are dropped (a timeline with none left gives ``{}``)."""
    timeline = data.get("timeline")
    if not isinstance(timeline, dict):
        return None
    stages = timeline.get("stages")
    if not isinstance(stages, dict):
        return {}
    return {
        str(name): float(v)
        for name, v in stages.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


def _error(data: dict) -> str:
    err = data["error"]
    return str(err.get("message", err) if isinstance(err, dict) else err)


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
        return Chunk(error=_error(data))
    return Chunk(content=_text(data, "delta"), usage=data.get("usage"), stages=timeline_stages(data))


def _text(data: dict, key: str) -> str:
    """The first choice's text: ``key`` is "delta" (stream chunks) or "message" (whole answers)."""
    if not (choices := data.get("choices")) or not isinstance(choices[0], dict):
        return ""
    part = choices[0].get(key) or {}
    text = part.get("content") or part.get("reasoning_content") or part.get("reasoning") or ""
    return text or choices[0].get("text") or ""  # /v1/completions


def parse_completion(body: str | bytes) -> Chunk:
    """A non-streamed answer (one JSON object) -> a ``Chunk`` with its whole text, usage and stages."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return Chunk(error=f"malformed answer: {body[:200]}")
    if not isinstance(data, dict):
        return Chunk(error=f"malformed answer: {body[:200]}")
    if "error" in data:
        return Chunk(error=_error(data))
    return Chunk(content=_text(data, "message"), usage=data.get("usage"), stages=timeline_stages(data))
