"""``POST /v1/completions``: a text prompt (or token ids) in, one ``text_completion`` or an SSE
stream of them out, with the legacy logprobs format on request.

The id is ``cmpl-<request id>``. Legacy logprobs carry each token's character offset in the
generated text, so the offset runs on across the chunks of a stream.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from router.api.deps import BackendDep, ConfigDep, PreparerDep
from router.generate import Generation
from router.protocol import CompletionRequest, completion_body, completion_choice, legacy_logprobs, usage
from router.responses import JSONResponse, collect, sse, with_timeline
from router.timing import RequestTiming

router = APIRouter()


@router.post("/v1/completions", response_model=None)
async def completions(
    req: CompletionRequest, request: Request, cfg: ConfigDep, backend: BackendDep, prep: PreparerDep
) -> Response:
    prepared = await prep.completion(req)
    rid = "cmpl-" + request.state.rid
    timing = RequestTiming(
        request.state.clock, backend.tracer, "POST /v1/completions", request.headers.get("traceparent", ""),
        backend.colocated,
    )  # fmt: skip
    gen = Generation(backend, prep.tokenizer, prepared, rid, cfg.request_timeout_s, timing)
    await gen.start()
    n_prompt, model = len(prepared.prompt_ids), cfg.model_name
    offset = 0

    def legacy(lps: list) -> dict | None:
        nonlocal offset
        if req.logprobs is None:
            return None
        out = legacy_logprobs(lps, offset)
        offset += sum(len(t.token) for t in lps)
        return out

    if not req.stream:
        text, finish, lps = await collect(gen, request)
        choice = completion_choice(text, finish, legacy(lps))
        body = completion_body(rid, model, choice, usage(n_prompt, gen.completion_tokens))
        return JSONResponse(with_timeline(body, gen))

    def chunk(text: str | None, finish: str | None, lps: list) -> dict:
        return completion_body(
            rid, model, completion_choice(text or "", finish, legacy(lps)), None, chunk=True
        )

    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    tail = completion_body(rid, model, {}, usage(n_prompt, 0), chunk=True) if include_usage else None
    return StreamingResponse(sse(gen, None, chunk, tail, n_prompt), media_type="text/event-stream")
