"""Entry point: ``python -m router --model DIR --encoders ... --prefills ... [flags]`` (``--help``),
or ``python -m router --model DIR --colocated [engine flags]`` (the whole model in this process).

Binds the HTTP port first (so ``--port 0`` is known), serves with uvicorn, and writes the ready
file (``{"http", "inbox", "pid"}``; colocated: no inbox) once at least one worker of each stage is
ready (colocated: once the engine thread runs).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import math
import signal
import socket
import sys
import time
from collections.abc import Sequence

import uvicorn

from router.api import RequestIdFilter, create_app
from router.backend import Backend, Readiness
from router.config import ENCODER_KEYS, PREFILL_KEYS, parse_config, parse_workers
from router.images import FetchLimits
from router.metrics import RouterMetrics
from router.orchestrator import Orchestrator
from router.prepare import Preparer
from router.sampling_defaults import load_sampling_defaults
from router.videos import VideoRules
from router.workers import Encoder, Prefill, Workers
from shared.about import banner
from shared.multimodal.video import VideoLimits
from shared.ready import write_ready_file
from shared.runtime import SKEW_ENV, freeze_startup_heap, skew_wall_clock
from shared.timeline import Service, Tracer
from shared.wire import security

log = logging.getLogger("router")


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_config(argv)
    skew = skew_wall_clock()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s")
    )
    logging.basicConfig(level=cfg.log_level.upper(), handlers=[handler])
    log.info("%s", banner("router"))  # where this code was loaded from
    if skew:
        log.warning("%s=%s: this process's wall clock is skewed by %+.1f s", SKEW_ENV, skew, skew)
    try:
        security.configure(cfg.curve_keys)  # before any socket: the inbox, the workers' DEALERs
    except security.MeshKeysError as e:
        log.error("--curve-keys: %s", e)
        return 2
    limits = FetchLimits(
        cfg.max_image_bytes, cfg.fetch_timeout_s, cfg.allow_private_urls, cfg.allow_file_urls
    )
    video_fetch = FetchLimits(
        cfg.max_video_bytes, cfg.fetch_timeout_s, cfg.allow_private_urls, cfg.allow_file_urls, kind="video"
    )
    videos = VideoRules(cfg.max_videos, video_fetch, VideoLimits(max_duration_s=cfg.max_video_seconds))
    defaults = load_sampling_defaults(cfg.model, cfg.generation_config)
    prep = Preparer(
        cfg.model, cfg.model_name, cfg.engine.max_model_len, cfg.max_images, limits, videos, defaults
    )
    tokens = prep.tokens
    orch: Backend
    workers: Readiness
    if cfg.colocated:
        from router.colocated import load_colocated  # imports the model code: only when needed

        orch = workers = load_colocated(cfg, RouterMetrics(), tokens)
    else:
        encoders = [
            Encoder(w["zmq"], w.get("http", ""))
            for w in parse_workers(cfg.encoders, ENCODER_KEYS, cfg.start_timeout_s)
        ]
        prefills = [
            Prefill(w["zmq"], w["inbox"], w.get("http", ""))
            for w in parse_workers(cfg.prefills, PREFILL_KEYS, cfg.start_timeout_s)
        ]
        # none configured: workers register themselves (their --report-to names this inbox)
        workers = Workers.configured(encoders, prefills, cfg.heartbeat_timeout_s)
        orch = Orchestrator(
            workers, RouterMetrics(), inbox=f"tcp://{cfg.inbox_host}:{cfg.inbox_port}",
            advertise_host=cfg.advertise_host or cfg.inbox_host, tokens=tokens, max_inflight=cfg.max_inflight, max_per_worker=cfg.max_per_worker,
            max_retries=cfg.max_retries,
        )  # fmt: skip
    orch.tracer = Tracer(Service.ROUTER, cfg.otlp_traces_endpoint, "router")
    app = create_app(cfg, workers, orch, prep)
    freeze_startup_heap()  # the tokenizer, and with --colocated the model
    sock = socket.socket(socket.AF_INET6 if ":" in cfg.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((cfg.host, cfg.port))
    url = f"http://{cfg.host}:{sock.getsockname()[1]}"
    loop, http = _fast_io()
    server = uvicorn.Server(
        # SIGTERM: uvicorn stops accepting and lets the open requests (streams) finish, for at
        # most --drain-timeout-s; then the app's shutdown stops the backend thread
        uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=math.ceil(cfg.drain_timeout_s),
            loop=loop,
            http=http,
        )
    )

    async def announce() -> None:
        while not server.started or not all(workers.ready(time.monotonic()).values()):
            if server.should_exit:
                return
            await asyncio.sleep(0.1)
        inbox = {"inbox": orch.reply_to} if orch.reply_to else {}  # colocated: no inbox
        write_ready_file(cfg.ready_file, {"http": url, **inbox})
        log.info("router ready on %s (%s)", url, f"inbox {orch.reply_to}" if inbox else "colocated")

    async def run() -> None:
        task = asyncio.create_task(announce())
        await server.serve(sockets=[sock])
        task.cancel()

    signal.signal(signal.SIGTERM, lambda *_: setattr(server, "should_exit", True))
    # uvicorn's loop setting takes effect only through its loop factory (``Server.run`` uses it)
    try:
        with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
            runner.run(run())
    except KeyboardInterrupt:  # Ctrl-C (epd up forwards SIGINT): the app has shut down
        pass
    return 0


def _fast_io() -> tuple[str, str]:
    """uvicorn's event loop and HTTP parser: uvloop and httptools (dependencies, which cut the
    router's time per request and per streamed chunk) when importable, else asyncio and h11."""
    chosen = []
    for fast, fallback in (("uvloop", "asyncio"), ("httptools", "h11")):
        try:
            importlib.import_module(fast)
            chosen.append(fast)
        except ImportError:
            log.debug("%s is not importable: uvicorn uses %s", fast, fallback)
            chosen.append(fallback)
    return chosen[0], chosen[1]


if __name__ == "__main__":
    raise SystemExit(main())
