"""``POST /v1/chat/completions``: messages (text and images) in, one chat completion or an SSE
stream of ``chat.completion.chunk``s out, with per-token logprobs on request.

The id is ``chatcmpl-<request id>``. A stream opens with the assistant role, then carries the text
deltas and the finish reason; with ``stream_options.include_usage`` a last chunk carries the usage.
The answer (or the stream's chunk with the finish reason) carries the request's ``timeline``
(seconds per stage, ``router/timing.py``), an extra field OpenAI clients ignore. ``n`` > 1: n
generations of the prompt run side by side (``Prepared.choice``), each its own choice ``index``
in the answer or the stream; the usage counts the prompt once and every choice's tokens (the
answer's ``timeline`` is the first choice's).

With ``tools`` (and ``tool_choice`` "auto") the answer's ``<tool_call>`` blocks become its
``tool_calls`` (``router.tool_calls``), and a finish of ``stop`` becomes ``tool_calls``; streamed,
each call is one delta (its whole arguments) once its block closes, and the content deltas are the
text outside the blocks.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from router.api.deps import BackendDep, ConfigDep, HttpDep, PreparerDep
from router.protocol import (
    ChatCompletionRequest,
    chat_choice,
    chat_chunk,
    chat_logprobs,
    chat_response,
    usage,
)
from router.responses import (
    JSONResponse,
    collect_all,
    generations,
    start_all,
    stream,
    with_timeline,
)
from router.tool_calls import ToolCallParser, parse_answer

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None)
async def chat(
    req: ChatCompletionRequest, request: Request, cfg: ConfigDep, backend: BackendDep, prep: PreparerDep,
    http: HttpDep,
) -> Response:  # fmt: skip
    prepared = await prep.chat(req, http)
    rid = "chatcmpl-" + request.state.rid
    route = "POST /v1/chat/completions"
    gens = generations(backend, prep.tokenizer, [prepared], rid, req.n, cfg.request_timeout_s, request, route)
    await start_all(gens)
    n_prompt, model = len(prepared.prompt_ids), cfg.model_name
    tools = req.calls_tools()
    max_calls = None if req.parallel_tool_calls else 1
    if not req.stream:
        choices = []
        for i, (text, finish, lps) in enumerate(await collect_all(gens, request)):
            content, calls = parse_answer(text, max_calls) if tools else (text, [])
            finish = "tool_calls" if calls and finish == "stop" else finish
            choices.append(
                chat_choice(i, content, finish, chat_logprobs(lps) if req.logprobs else None, calls)
            )
        body = chat_response(rid, model, choices, n_prompt, sum(g.completion_tokens for g in gens))
        return JSONResponse(with_timeline(body, gens[0]))

    parsers = [ToolCallParser(max_calls) for _ in gens] if tools else []

    def chunk(i: int, text: str, finish: str | None, lps: list) -> dict | None:
        delta: dict = {"content": text}
        if parsers:  # the content the parser shows, and the calls it completed
            got = parsers[i].push(text)
            if finish is not None:
                rest = parsers[i].finish()
                got.content, got.calls = got.content + rest.content, got.calls + rest.calls
                finish = "tool_calls" if parsers[i].calls and finish == "stop" else finish
            delta = {"content": got.content} if got.content else {}
            if got.calls:
                delta["tool_calls"] = got.calls
            if not (delta or lps or finish):
                return None  # held back (a block still open): no event
        return chat_chunk(rid, model, delta, finish, chat_logprobs(lps) if req.logprobs else None, index=i)

    def first(i: int) -> dict:
        return chat_chunk(rid, model, {"role": "assistant", "content": ""}, index=i)

    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    tail = chat_chunk(rid, model, None, usage_=usage(n_prompt, 0)) if include_usage else None
    return StreamingResponse(stream(gens, first, chunk, tail, n_prompt), media_type="text/event-stream")
