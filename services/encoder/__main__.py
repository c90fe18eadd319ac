"""Entry point: ``python -m services.encoder --model DIR [flags]`` (see ``config.py``, ``--help``)."""

from __future__ import annotations

from collections.abc import Sequence

from services.common.http import Health
from services.common.main import run_service
from services.encoder.config import parse_config
from services.encoder.metrics import EncoderMetrics
from services.encoder.server import EncoderServer
from shared.vision.runner import VisionRunner


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_config(argv)
    metrics = EncoderMetrics()

    def build(health: Health) -> tuple[EncoderServer, dict[str, str]]:
        runner = VisionRunner(cfg.model, cfg.device, cfg.dtype)
        health.info = {"dtype": str(runner.dtype).removeprefix("torch.")}
        server = EncoderServer(cfg, runner, metrics, health)
        return server, {"zmq": server.endpoint}

    return run_service(cfg, "encoder", metrics, build)


if __name__ == "__main__":
    raise SystemExit(main())
