"""``POST /v1/chat/completions``: messages (text and images) in, one chat completion or an SSE
stream of ``chat.completion.chunk``s out, with per-token logprobs on request.

The id is ``chatcmpl-<request id>``. A stream opens with the assistant role, then carries the text
deltas and the finish reason; with ``stream_options.include_usage`` a last chunk carries the usage.
The answer (or the stream's chunk with the finish reason) carries the request's ``timeline``
(seconds per stage, ``router/timing.py``), an extra field OpenAI clients ignore. ``n`` > 1: n
generations of the prompt run side by side (``Prepared.choice``), each its own choice ``index``
in the answer or the stream; the usage counts the prompt once and every choice's tokens (the
answer's ``timeline`` is the first choice's).
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

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None)
async def chat(
    req: ChatCompletionRequest, request: Request, cfg: ConfigDep, backend: BackendDep, prep: PreparerDep,
    http: HttpDep,
) -> Response:  # fmt: skip
    prepared = await prep.chat(req, http)
    rid = "chatcmpl-" + request.state.rid
    route = "POST /v1/chat/completions"
    gens = generations(backend, prep.tokenizer, prepared, rid, req.n, cfg.request_timeout_s, request, route)
    await start_all(gens)
    n_prompt, model = len(prepared.prompt_ids), cfg.model_name
    if not req.stream:
        answers = await collect_all(gens, request)
        choices = [
            chat_choice(i, text, finish, chat_logprobs(lps) if req.logprobs else None)
            for i, (text, finish, lps) in enumerate(answers)
        ]
        body = chat_response(rid, model, choices, n_prompt, sum(g.completion_tokens for g in gens))
        return JSONResponse(with_timeline(body, gens[0]))

    def chunk(i: int, text: str | None, finish: str | None, lps: list) -> dict:
        delta = {} if text is None else {"content": text}
        return chat_chunk(rid, model, delta, finish, chat_logprobs(lps) if req.logprobs else None, index=i)

    def first(i: int) -> dict:
        return chat_chunk(rid, model, {"role": "assistant", "content": ""}, index=i)

    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    tail = chat_chunk(rid, model, None, usage_=usage(n_prompt, 0)) if include_usage else None
    return StreamingResponse(stream(gens, first, chunk, tail, n_prompt), media_type="text/event-stream")
