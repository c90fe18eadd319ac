"""``POST /v1/chat/completions``: messages (text and images) in, one chat completion or an SSE
stream of ``chat.completion.chunk``s out, with per-token logprobs on request.

The id is ``chatcmpl-<request id>``. A stream opens with the assistant role, then carries the text
deltas and the finish reason; with ``stream_options.include_usage`` a last chunk carries the usage.
The answer (or the stream's chunk with the finish reason) carries the request's ``timeline``
(seconds per stage, ``router/timing.py``), an extra field OpenAI clients ignore.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from router.api.deps import BackendDep, ConfigDep, HttpDep, PreparerDep
from router.generate import Generation
from router.protocol import ChatCompletionRequest, chat_chunk, chat_logprobs, chat_response, usage
from router.responses import JSONResponse, collect, sse, with_timeline
from router.timing import RequestTiming

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None)
async def chat(
    req: ChatCompletionRequest, request: Request, cfg: ConfigDep, backend: BackendDep, prep: PreparerDep,
    http: HttpDep,
) -> Response:  # fmt: skip
    prepared = await prep.chat(req, http)
    rid = "chatcmpl-" + request.state.rid
    timing = RequestTiming(
        request.state.clock, backend.tracer, "POST /v1/chat/completions", request.headers.get("traceparent", ""),
        backend.colocated,
    )  # fmt: skip
    gen = Generation(backend, prep.tokenizer, prepared, rid, cfg.request_timeout_s, timing)
    await gen.start()
    n_prompt, model = len(prepared.prompt_ids), cfg.model_name
    if not req.stream:
        text, finish, lps = await collect(gen, request)
        logprobs = chat_logprobs(lps) if req.logprobs else None
        body = chat_response(rid, model, text, finish, n_prompt, gen.completion_tokens, logprobs)
        return JSONResponse(with_timeline(body, gen))

    def chunk(text: str | None, finish: str | None, lps: list) -> dict:
        delta = {} if text is None else {"content": text}
        return chat_chunk(rid, model, delta, finish, chat_logprobs(lps) if req.logprobs else None)

    first = chat_chunk(rid, model, {"role": "assistant", "content": ""})
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    tail = chat_chunk(rid, model, None, usage_=usage(n_prompt, 0)) if include_usage else None
    return StreamingResponse(sse(gen, first, chunk, tail, n_prompt), media_type="text/event-stream")
