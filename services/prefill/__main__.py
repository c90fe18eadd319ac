"""Entry point: ``python -m services.prefill --model DIR [flags]`` (see ``config.py``, ``--help``)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Sequence

import torch
import zmq

from services.common.engine_setup import build_engine
from services.common.launch import write_ready_file
from services.encoder.metrics import Health, start_http
from services.prefill.config import parse_config
from services.prefill.metrics import PrefillMetrics
from services.prefill.server import PrefillServer
from shared.transfer import ZmqKVSender

log = logging.getLogger("prefill")


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
    metrics, health = PrefillMetrics(), Health()
    http = start_http(cfg.host, cfg.http_port, metrics, health)  # type: ignore[arg-type]
    log.info("loading the language model from %s (%s, %s)", cfg.model, cfg.device, cfg.dtype)
    engine = build_engine(cfg.model, cfg.device, cfg.dtype, cfg)
    server = PrefillServer(cfg, engine, ZmqKVSender(), metrics, health)
    health.info = {"name": server.name, "zmq": server.endpoint, "inbox": server.inbox_endpoint}
    write_ready_file(
        cfg.ready_file,
        {
            "zmq": server.endpoint,
            "inbox": server.inbox_endpoint,
            "http": f"http://{cfg.host}:{http.server_port}",
        },
    )
    try:
        with torch.inference_mode():
            server.serve(stop)
    finally:
        health.ready = False
        server.close()
        zmq.Context.instance().term()  # wait for zero-copy sends still in flight
        http.shutdown()
        log.info("%s stopped", server.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
