"""Entry point: ``python -m services.prefill --model DIR [flags]`` (see ``config.py``, ``--help``)."""

from __future__ import annotations

from collections.abc import Sequence

from services.common.engine_setup import build_engine
from services.common.http import Health
from services.common.main import run_service
from services.prefill.config import parse_config
from services.prefill.metrics import PrefillMetrics
from services.prefill.server import PrefillServer
from shared.transfer import build_sender


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_config(argv)
    metrics = PrefillMetrics()

    def build(health: Health) -> tuple[PrefillServer, dict[str, str]]:
        engine = build_engine(cfg.model, cfg.device, cfg.dtype, cfg.engine)
        sender = build_sender(cfg.transfer, engine.pool, cfg.host)
        server = PrefillServer(cfg, engine, sender, metrics, health)
        return server, {"zmq": server.endpoint, "inbox": server.inbox_endpoint}

    return run_service(cfg, "prefill", metrics, build)


if __name__ == "__main__":
    raise SystemExit(main())
