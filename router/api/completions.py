"""``POST /v1/completions``: a text prompt (or token ids) in, one ``text_completion`` or an SSE
stream of them out, with the legacy logprobs format on request.

The id is ``cmpl-<request id>``. Legacy logprobs carry each token's character offset in the
generated text, so the offset runs on across the chunks of a stream. ``n`` > 1 as in
``router.api.chat``: each choice its own index (and its own offsets). A batch of prompts (texts or
lists of token ids, as vLLM takes them) runs side by side too: prompt k's i-th choice is choice
k * n + i, and the usage counts every prompt once.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from router.api.deps import BackendDep, ConfigDep, PreparerDep
from router.protocol import CompletionRequest, completion_body, completion_choice, legacy_logprobs, usage
from router.responses import (
    JSONResponse,
    collect_all,
    generations,
    start_all,
    stream,
    with_timeline,
)

router = APIRouter()


@router.post("/v1/completions", response_model=None)
async def completions(
    req: CompletionRequest, request: Request, cfg: ConfigDep, backend: BackendDep, prep: PreparerDep
) -> Response:
    prompts = await prep.completions(req)
    rid = "cmpl-" + request.state.rid
    route = "POST /v1/completions"
    gens = generations(backend, prep.tokenizer, prompts, rid, req.n, cfg.request_timeout_s, request, route)
    await start_all(gens)
    n_prompt, model = sum(len(p.prompt_ids) for p in prompts), cfg.model_name
    offsets = [0] * len(gens)  # each choice's text so far: its legacy logprobs' character offsets

    def legacy(i: int, lps: list) -> dict | None:
        if req.logprobs is None:
            return None
        out = legacy_logprobs(lps, offsets[i])
        offsets[i] += sum(len(t.token) for t in lps)
        return out

    if not req.stream:
        answers = await collect_all(gens, request)
        choices = [
            completion_choice(text, finish, legacy(i, lps), i)
            for i, (text, finish, lps) in enumerate(answers)
        ]
        body = completion_body(rid, model, choices, usage(n_prompt, sum(g.completion_tokens for g in gens)))
        return JSONResponse(with_timeline(body, gens[0]))

    def chunk(i: int, text: str | None, finish: str | None, lps: list) -> dict:
        return completion_body(
            rid, model, [completion_choice(text or "", finish, legacy(i, lps), i)], None, chunk=True
        )

    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    tail = completion_body(rid, model, [], usage(n_prompt, 0), chunk=True) if include_usage else None
    return StreamingResponse(stream(gens, None, chunk, tail, n_prompt), media_type="text/event-stream")
