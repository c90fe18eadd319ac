"""OpenAI request and response shapes (pydantic), and the OpenAI error JSON.

Requests are validated here (types, ranges); everything that needs the model (context length,
images, the model id) is checked by the router afterwards. Responses are plain dicts built by
``chat_response`` / ``chat_chunk`` and friends, in the exact shapes the ``openai`` client parses.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class APIError(Exception):
    """An error the client gets as ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
        code: str | None = None, headers: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def overloaded(message: str = "the cluster is overloaded; retry later") -> APIError:
    return APIError(503, message, type="overloaded_error", code="overloaded", headers={"Retry-After": "1"})


def _valid_unicode(value: Any) -> Any:
    """A string, or a list of them, without lone surrogates: JSON's ``\\ud800`` escapes can carry
    them, and no tokenizer (nor UTF-8) takes them. A field validator: a 400 names the field."""
    for text in value if isinstance(value, list) else [value]:
        if isinstance(text, str) and not text.isascii():
            try:
                text.encode()
            except UnicodeEncodeError:
                raise ValueError("the text holds a lone surrogate (it is not valid Unicode)") from None
    return value


MAX_CHOICES = 16
MAX_GENERATIONS = 64  # a completions request's prompts times n


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ImageURL(_Strict):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(_Strict):
    type: Literal["text"]
    text: str
    _unicode = field_validator("text")(_valid_unicode)


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class VideoURL(_Strict):
    """A video file (data: or http(s): URL), or still frames as ``data:video/jpeg;base64,<f1>,<f2>,...``
    (vLLM's shape; any image type of ours), which stand for ``fps`` frames per second."""

    url: str = Field(min_length=1)
    fps: float | None = Field(default=None, gt=0.0, le=240.0)  # frame lists only (default 2)


class VideoPart(_Strict):
    type: Literal["video_url"]
    video_url: VideoURL


ContentPart = TextPart | ImagePart | VideoPart


class MMProcessorKwargs(BaseModel):
    """How videos are sampled (vLLM's ``mm_processor_kwargs``): ``fps`` frames per second, or
    ``num_frames`` in all (not both); default: the checkpoint's video processor (2 fps)."""

    model_config = ConfigDict(extra="forbid")
    fps: float | None = Field(default=None, gt=0.0, le=60.0)
    num_frames: int | None = Field(default=None, ge=1, le=4096)


class FunctionCall(_Strict):
    name: str = Field(min_length=1)
    arguments: str  # JSON, as the model wrote it (rendered into the prompt as it is)
    _unicode = field_validator("name", "arguments")(_valid_unicode)


class ToolCall(_Strict):
    """A call an earlier assistant turn made (``router.tool_calls`` writes them in answers)."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionDef(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None  # JSON Schema, shown to the model
    strict: bool | None = None  # accepted, not enforced (no guided decoding), as vLLM without it
    _unicode = field_validator("description")(_valid_unicode)


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[ToolCall] | None = None  # assistant messages only
    _unicode = field_validator("content", "name", "tool_call_id")(_valid_unicode)


class StreamOptions(_Strict):
    include_usage: bool = False


class SamplingFields(_Strict):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    # -1 or 0: off; bounded so that it fits the wire's and the sampler's integers (any vocabulary is smaller)
    top_k: int = Field(default=0, ge=-1, le=(1 << 31) - 1)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=100.0)  # vLLM's extension (transformers')
    # token id (a string, as JSON keys are) -> added to its logit; the ids are checked against the vocabulary
    logit_bias: dict[str, float] | None = None
    min_tokens: int = Field(default=0, ge=0)  # vLLM's: no stop token or stop string before this many
    stop_token_ids: list[int] | None = None  # vLLM's: more tokens that end the answer
    allowed_token_ids: list[int] | None = None  # vLLM's: the only tokens the answer may hold
    include_stop_str_in_output: bool = False  # vLLM's: the stop string (or stop token) ends the text
    skip_special_tokens: bool = True  # vLLM's: special tokens are not text
    bad_words: list[str] | None = None  # vLLM's: words the answer must not write (router.token_controls)
    # The answer's structure (``router.structured``): OpenAI's response_format (text, json_object,
    # json_schema) or vLLM's structured_outputs (json, regex or choice)
    response_format: dict[str, Any] | None = None
    structured_outputs: dict[str, Any] | None = None
    seed: int | None = Field(default=None, ge=0, le=(1 << 63) - 1)
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)  # choices: n generations of the one prompt
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    user: str | None = None
    _unicode = field_validator("stop", "bad_words")(_valid_unicode)

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 16 or any(not s for s in stops):
            raise bad_request("stop: at most 16 non-empty strings", "stop")
        return stops


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    mm_processor_kwargs: MMProcessorKwargs | None = None
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    # Tools are shown to the model (the chat template's format) and its calls parsed from the answer
    # (``router.tool_calls``) unless tool_choice is "none"; "auto" (the default with tools) lets the
    # model choose, "required" and a named function hold the answer to calls (``router.structured``).
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True  # false: at most one call per answer (later ones dropped)

    def calls_tools(self) -> bool:
        """Whether the tools are shown to the model and its answer parsed for calls."""
        return bool(self.tools) and self.tool_choice != "none"


class CompletionRequest(SamplingFields):
    # one prompt (text or token ids) or a batch of them: each gets n choices, indexed prompt * n + i
    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False
    max_tokens: int | None = Field(default=16, ge=1)
    suffix: str | None = None  # refused: no fill-in-the-middle here
    best_of: int | None = Field(default=None, ge=1, le=1)  # vLLM's V1 engine refuses it too

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> None:
        if value:
            raise ValueError("fill-in-the-middle is not supported")
        return None

    _prompt_unicode = field_validator("prompt")(_valid_unicode)


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _finite(logprob: float) -> float:
    """A logprob JSON can carry: -inf (a token the logits ruled out) and NaN become -9999.0, as in
    vLLM (JSON has no infinities; the stdlib wrote ``-Infinity``, orjson writes ``null``)."""
    return logprob if logprob > -9999.0 else -9999.0


def _token(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": _finite(logprob), "bytes": list(text.encode())}


def chat_logprobs(tokens: list[Any]) -> dict[str, Any]:
    """Chat ``logprobs.content`` from ``TokenLogprob``s (router/generate.py)."""
    return {
        "content": [
            {**_token(t.token, t.logprob), "top_logprobs": [_token(a, lp) for a, lp in t.top]} for t in tokens
        ]
    }


def legacy_logprobs(tokens: list[Any], start: int = 0) -> dict[str, Any]:
    """``/v1/completions`` logprobs from ``TokenLogprob``s; ``start``: the text offset of the first."""
    offsets, at = [], start
    for t in tokens:
        offsets.append(at)
        at += len(t.token)
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [_finite(t.logprob) for t in tokens],
        "top_logprobs": (
            [{a: _finite(lp) for a, lp in t.top} for t in tokens] if any(t.top for t in tokens) else None
        ),
        "text_offset": offsets,
    }


def chat_choice(
    index: int, text: str | None, finish: str, logprobs: dict | None, tool_calls: list[dict] | None = None
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish}


def chat_response(
    rid: str, model: str, choices: list[dict[str, Any]], n_prompt: int, n_out: int
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage(n_prompt, n_out),
    }


def chat_chunk(
    rid: str, model: str, delta: dict[str, Any] | None, finish: str | None = None,
    logprobs: dict | None = None, usage_: dict | None = None, index: int = 0,
) -> dict[str, Any]:  # fmt: skip
    choices = (
        []
        if delta is None
        else [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]
    )
    chunk: dict[str, Any] = {
        "id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
        "choices": choices,
    }  # fmt: skip
    if usage_ is not None:
        chunk["usage"] = usage_
    return chunk


def completion_choice(text: str, finish: str | None, logprobs: dict | None, index: int = 0) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}


def completion_body(
    rid: str, model: str, choices: list[dict[str, Any]], usage_: dict | None, chunk: bool = False
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": choices,
    }  # fmt: skip
    if usage_ is not None or not chunk:
        body["usage"] = usage_
    return body
