"""The naive baseline: an OpenAI-compatible chat server that runs transformers' ``generate``, one
request at a time.

    python -m bench.hf_server --model DIR [--port 0] [--host 127.0.0.1] [--dtype float32]
        [--torch-threads N] [--max-queue 64] [--ready-file F]

Owns nothing the cluster does not also do, so that comparisons are fair: requests are prepared by
the router's own ``Preparer`` (model id, data-URL images, chat template with expanded image tokens,
context and budget checks, the checkpoint's EOS ids), pixels come from ``shared.multimodal`` (the
same values as transformers' image processor), and the model is
``Qwen3VLMoeForConditionalGeneration`` as transformers loads it.

Request life cycle: validate and prepare (400) -> take a queue slot (503 past ``--max-queue``
waiting requests) -> the single worker thread preprocesses the images and runs ``generate``, whose
streamer pushes each token id to the request's asyncio queue as it is sampled -> the HTTP side
detokenizes and streams SSE chunks (the role chunk goes with the first token, so TTFT is real) or
collects one answer. A streaming client that goes away cancels its generation (a stopping
criterion), or its turn if it is still waiting.

``ignore_eos`` runs ``generate`` with no EOS ids at all (like the engine: EOS may be sampled but
does not stop), so exactly ``max_tokens`` are generated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from router.detokenize import Detokenizer, StopStrings
from router.generate import new_id
from router.images import FetchLimits
from router.prepare import Prepared, Preparer
from router.protocol import (
    APIError,
    ChatCompletionRequest,
    bad_request,
    chat_choice,
    chat_chunk,
    chat_response,
    overloaded,
    usage,
)
from shared.multimodal.image import decode_image
from shared.multimodal.video import VideoLimits
from shared.multimodal.vision_inputs import preprocess_image
from shared.ready import write_ready_file
from shared.vision.runner import video_pixels


@dataclass(frozen=True)
class ServerConfig:
    model: Path
    host: str = "127.0.0.1"
    port: int = 8000
    dtype: str = "bfloat16"
    torch_threads: int = 0  # 0: torch's default
    max_queue: int = 64  # requests waiting behind the running one; more get a 503
    request_timeout_s: float = 600.0  # from submission (the wait for its turn included) to the last token
    max_model_len: int = 0  # 0: the model's max_position_embeddings
    max_images: int = 8
    served_model_name: str = ""  # default: the model directory's name
    ready_file: Path | None = None

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model.name


_HELP = {
    "dtype": "torch dtype of the weights (bfloat16, float32, ...)",
    "torch_threads": "torch intra-op threads (0: torch's default)",
    "max_queue": "requests that may wait behind the running one; more get a 503",
    "request_timeout_s": "seconds from submission to the last token (waiting included); then 504",
    "max_model_len": "context length (0: the model's)",
    "ready_file": "write {http, pid} here once serving",
}


def parse_config(argv: Sequence[str] | None = None) -> ServerConfig:
    p = argparse.ArgumentParser(prog="python -m bench.hf_server", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="checkpoint folder")
    for name, default in ServerConfig.__dataclass_fields__.items():
        if name != "model":
            kind = type(default.default) if default.default is not None else Path
            p.add_argument(
                "--" + name.replace("_", "-"), type=kind, default=default.default, help=_HELP.get(name)
            )
    return ServerConfig(**vars(p.parse_args(argv)))


class _TokenQueue(BaseStreamer):
    """``generate``'s streamer: each new token id goes to an asyncio queue; ``None`` ends it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
        self.loop, self.queue, self.prompt_seen = loop, queue, False

    def send(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate passes the prompt first
            self.prompt_seen = True
            return
        for token in value.flatten().tolist():
            self.send(token)

    def end(self) -> None:
        self.send(None)


class _Cancelled(StoppingCriteria):
    def __init__(self, flag: threading.Event) -> None:
        self.flag = flag

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.flag.is_set(), dtype=torch.bool)


class Run:
    """One request's turn: its token ids as they come (async iteration) until its deadline, and
    ``cancel``. Past the deadline (waiting for its turn included) it is cancelled and ends in a 504."""

    def __init__(self, timeout_s: float) -> None:
        self.queue: asyncio.Queue[int | BaseException | None] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.deadline = time.monotonic() + timeout_s

    async def _next(self) -> int | BaseException | None:
        try:
            return await asyncio.wait_for(self.queue.get(), max(0.0, self.deadline - time.monotonic()))
        except TimeoutError:
            self.cancel()
            raise APIError(504, "request timed out", type="timeout_error", code="deadline_exceeded") from None

    async def tokens(self) -> AsyncIterator[int]:
        while (item := await self._next()) is not None:
            if isinstance(item, BaseException):
                raise APIError(500, f"generate failed: {type(item).__name__}: {item}", type="internal_error")
            yield item

    def cancel(self) -> None:
        self.cancelled.set()


class HFGenerator:
    """The transformers model and the one thread that runs it; requests wait in its FIFO."""

    def __init__(self, cfg: ServerConfig, prep: Preparer) -> None:
        from transformers import Qwen3VLMoeForConditionalGeneration  # deferred: heavy import

        self.cfg, self.prep = cfg, prep
        dtype = getattr(torch, cfg.dtype)
        self.model = Qwen3VLMoeForConditionalGeneration.from_pretrained(cfg.model, dtype=dtype).eval()
        # torch's thread count is per OS thread under OpenMP: set it where generate runs.
        init = (torch.set_num_threads, (cfg.torch_threads,)) if cfg.torch_threads else (None, ())
        self.pool = ThreadPoolExecutor(1, "generate", initializer=init[0], initargs=init[1])
        self.pending = 0  # submitted and not finished (event loop thread only)

    def submit(self, prepared: Prepared) -> Run:
        if self.pending > self.cfg.max_queue:
            raise overloaded(f"{self.pending} requests are queued or running; retry later")
        run, loop = Run(self.cfg.request_timeout_s), asyncio.get_running_loop()
        self.pending += 1
        fut = self.pool.submit(self._generate, prepared, run, _TokenQueue(loop, run.queue))
        fut.add_done_callback(lambda _: loop.call_soon_threadsafe(self._done))
        return run

    def _done(self) -> None:
        self.pending -= 1

    def _generate(self, prepared: Prepared, run: Run, streamer: _TokenQueue) -> None:
        if run.cancelled.is_set():  # the client left while waiting for its turn
            return streamer.end()
        try:
            p, ids = prepared.params, torch.tensor([prepared.prompt_ids])  # [1, L]
            kwargs: dict[str, Any] = {
                "input_ids": ids,
                "attention_mask": torch.ones_like(ids),
                # text 0, image 1, video 2
                "mm_token_type_ids": (ids == self.prep.builder.image_token_id).int()
                + 2 * (ids == self.prep.builder.video_token_id).int(),
            }
            images = [im for im in prepared.images if im.video is None]
            videos = [im for im in prepared.images if im.video is not None]
            if images:
                proc = self.prep.processor
                pixels = [preprocess_image(decode_image(im.data), proc) for im in images]
                kwargs["pixel_values"] = torch.cat([px for px, _ in pixels])  # [patches, C*T*P*P]
                kwargs["image_grid_thw"] = torch.tensor([grid for _, grid in pixels])  # [images, 3]
            if videos:  # decoded and preprocessed as the encoder does (the router planned the frames)
                cfg, limits = self.prep.video_processor, VideoLimits()
                pixels = [video_pixels(v.data, v.video, v.hash, cfg, limits) for v in videos if v.video]
                kwargs["pixel_values_videos"] = torch.cat([px for px, _ in pixels])
                kwargs["video_grid_thw"] = torch.tensor([grid for _, grid in pixels])  # [videos, 3]
            if p.greedy:
                sampling: dict[str, Any] = {"do_sample": False}
            else:
                sampling = dict(do_sample=True, temperature=p.temperature, top_p=p.top_p, top_k=p.top_k)
                sampling["min_p"] = p.min_p or None
                if p.seed is not None:
                    torch.manual_seed(p.seed)
            with torch.inference_mode():
                self.model.generate(
                    **kwargs, **sampling, max_new_tokens=p.max_tokens, streamer=streamer,
                    eos_token_id=list(p.stop_token_ids), pad_token_id=(*self.prep.eos_ids, 0)[0],
                    stopping_criteria=StoppingCriteriaList([_Cancelled(run.cancelled)]),
                )  # fmt: skip
        except Exception as e:  # reported to the client; the worker goes on with the next request
            streamer.send(e)


async def pieces(run: Run, prep: Preparer, prepared: Prepared) -> AsyncIterator[tuple[str, str | None, int]]:
    """(text, finish reason or None, completion tokens so far) per token; the last has the finish."""
    detok, stops, n, last = Detokenizer(prep.tokenizer), StopStrings(prepared.stops), 0, -1
    async for last in run.tokens():
        n += 1
        out, stopped = stops.push(detok.push(last))
        if stopped:
            run.cancel()
            yield out, "stop", n
            return
        yield out, None, n  # even when empty: the first token is what the client's TTFT waits for
    out, stopped = stops.push(detok.flush(), final=True)
    yield out, "stop" if stopped or last in prepared.params.stop_token_ids else "length", n


def create_app(cfg: ServerConfig, prep: Preparer, gen: HFGenerator) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.http = httpx.AsyncClient(timeout=10.0, follow_redirects=False)
        yield
        await app.state.http.aclose()

    app = FastAPI(title="transformers generate baseline", lifespan=lifespan)

    @app.exception_handler(APIError)
    async def api_error(_: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or None
        return await api_error(_, APIError(400, f"{loc or 'body'}: {first.get('msg', 'invalid')}", param=loc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return await api_error(_, APIError(e.status_code, str(e.detail), code=str(e.status_code)))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "pending": gen.pending}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": cfg.model_name, "object": "model", "created": 0, "owned_by": "transformers"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(req: ChatCompletionRequest, request: Request) -> Response:
        if req.logprobs:
            raise bad_request("logprobs are not supported by this baseline", "logprobs")
        prepared = await prep.chat(req, request.app.state.http)
        rid, n_prompt, name = "chatcmpl-" + new_id(), len(prepared.prompt_ids), cfg.model_name
        run = gen.submit(prepared)
        it = pieces(run, prep, prepared).__aiter__()
        try:
            first = await it.__anext__()  # errors before the first token keep their status code
        except BaseException:
            run.cancel()
            raise
        if not req.stream:
            text, finish, n = [first[0]], first[1], first[2]
            try:
                async for out, finish_, n_ in it:
                    text.append(out)
                    finish, n = finish_, n_
            finally:
                run.cancel()  # a no-op once generate is done; stops it when the deadline struck
            choice = chat_choice(0, "".join(text), finish or "stop", None)
            return JSONResponse(chat_response(rid, name, [choice], n_prompt, n))
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def events() -> AsyncIterator[str]:
            n = 0
            try:
                yield _sse(chat_chunk(rid, name, {"role": "assistant", "content": ""}))
                try:
                    async for piece in _chain(first, it):
                        out, finish, n = piece
                        if out or finish:
                            yield _sse(chat_chunk(rid, name, {"content": out} if out else {}, finish))
                except APIError as e:
                    yield _sse(e.body())
                if include_usage:
                    yield _sse(chat_chunk(rid, name, None, usage_=usage(n_prompt, n)))
                yield "data: [DONE]\n\n"
            finally:
                run.cancel()

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


async def _chain(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    yield first
    async for item in rest:
        yield item


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_config(argv)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    prep = Preparer(cfg.model, cfg.model_name, cfg.max_model_len, cfg.max_images, FetchLimits())
    app = create_app(cfg, prep, HFGenerator(cfg, prep))
    sock = socket.socket(socket.AF_INET6 if ":" in cfg.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((cfg.host, cfg.port))
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    url = f"http://{host}:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))

    async def announce() -> None:
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.05)
        write_ready_file(cfg.ready_file, {"http": url})
        print(f"OpenAI API at {url}/v1", flush=True)

    async def serve() -> None:
        task = asyncio.create_task(announce())
        await server.serve(sockets=[sock])
        task.cancel()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
