"""Entry point: ``python -m services.encoder --model DIR [flags]`` (see ``config.py``, ``--help``)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Sequence

import torch
import zmq

from services.common.launch import write_ready_file
from services.encoder.config import parse_config
from services.encoder.metrics import EncoderMetrics, Health, start_http
from services.encoder.runner import VisionRunner
from services.encoder.server import EncoderServer

log = logging.getLogger("encoder")


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_config(argv)
    logging.basicConfig(
        level=cfg.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    metrics, health = EncoderMetrics(), Health()
    http = start_http(cfg.host, cfg.http_port, metrics, health)  # live (not ready) while loading
    log.info("loading the vision tower from %s (%s, %s)", cfg.model, cfg.device, cfg.dtype)
    runner = VisionRunner(cfg.model, cfg.device, cfg.dtype)
    server = EncoderServer(cfg, runner, metrics, health)
    health.info = {
        "name": server.name,
        "zmq": server.endpoint,
        "dtype": str(runner.dtype).removeprefix("torch."),
    }
    write_ready_file(
        cfg.ready_file, {"zmq": server.endpoint, "http": f"http://{cfg.host}:{http.server_port}"}
    )
    try:
        server.serve(stop)
    finally:
        health.ready = False
        server.close()
        # Wait (up to each socket's linger) for zero-copy sends still in flight: exiting with ZMQ
        # holding views of freed tensors would crash the I/O thread.
        zmq.Context.instance().term()
        http.shutdown()
        log.info("%s stopped", server.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
