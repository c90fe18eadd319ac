"""Entry point: ``python -m services.decode --model DIR [flags]`` (see ``config.py``, ``--help``)."""

from __future__ import annotations

from collections.abc import Sequence

from services.common.engine_setup import build_engine
from services.common.http import Health
from services.common.main import run_service
from services.decode.config import parse_config
from services.decode.metrics import DecodeMetrics
from services.decode.server import DecodeServer
from shared.transfer import build_receiver


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_config(argv)
    metrics = DecodeMetrics()

    def build(health: Health) -> tuple[DecodeServer, dict[str, str]]:
        engine = build_engine(cfg.model, cfg.device, cfg.dtype, cfg.engine)
        name = cfg.name or "decode"
        receiver = build_receiver(
            cfg.transfer, cfg.address(cfg.kv_port), engine.pool, cfg.reachable_host, name
        )
        server = DecodeServer(cfg, engine, receiver, metrics, health)
        receiver.name = server.name
        return server, {"kv": receiver.address, "control": server.endpoint}

    return run_service(cfg, "decode", metrics, build)


if __name__ == "__main__":
    raise SystemExit(main())
