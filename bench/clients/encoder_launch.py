"""Start an encoder as a child process and wait until it serves (for launchers, tests, benchmarks)."""

from __future__ import annotations

from pathlib import Path

from bench.launch import ServiceProcess, start_service


class EncoderProcess(ServiceProcess):
    """A running ``python -m services.encoder``; ``zmq`` is its request endpoint."""

    @property
    def zmq(self) -> str:
        return self.info["zmq"]


def start_encoder(
    model: str | Path, *args: str, log_dir: str | Path | None = None, timeout: float = 120.0
) -> EncoderProcess:
    """Start an encoder on free loopback ports with extra flags ``args``; raise if it is not ready
    within ``timeout`` seconds (the child is killed and its log is in the message)."""
    started = start_service(
        "services.encoder", model, "--port", "0", "--http-port", "0", *args, log_dir=log_dir, timeout=timeout
    )
    return EncoderProcess(started.proc, started.info, started.log_path)
