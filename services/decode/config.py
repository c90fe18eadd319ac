"""The decode worker's configuration: one frozen dataclass, built once at the entry point.

Precedence: command-line flag, then environment variable (``DECODE_<FLAG>``), then the default.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from services.common.engine_setup import ENGINE_HELP, EngineFlags, check_device
from services.common.flags import parse_flags
from shared.wire.messages import ADDRESS


@dataclass(frozen=True, kw_only=True)
class DecodeConfig(EngineFlags):
    model: Path
    device: str = "cpu"
    dtype: str = "auto"
    host: str = "127.0.0.1"
    advertise_host: str = ""  # the host others reach this worker by (default: --host, or the host name)
    port: int = 5800  # control (PULL): AbortRequest from routers; 0 picks a free port
    kv_port: int = 5801  # KV transfers (ROUTER) from prefill workers; 0 picks a free port
    http_port: int = 8800
    max_pending: int = 64  # reservations waiting for room; beyond it new ones are refused
    transfer_timeout_s: float = 30.0  # a granted transfer must complete within this (else prefill is gone)
    report_to: str = ""  # comma-separated router addresses for LoadReport (PUSH)
    report_interval_s: float = 0.5
    send_timeout_s: float = 5.0
    torch_threads: int = 0
    name: str = ""
    ready_file: Path | None = None
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        check_device(self.device, self.dtype)
        if self.max_pending < 0:
            raise ValueError("max_pending must be >= 0")
        if min(self.transfer_timeout_s, self.report_interval_s, self.send_timeout_s) <= 0:
            raise ValueError("timeouts and intervals must be positive")
        for address in self.report_addresses:
            if not re.fullmatch(ADDRESS, address):
                raise ValueError(f"report_to: {address!r} is not a ZMQ address")

    @property
    def report_addresses(self) -> list[str]:
        return [a.strip() for a in self.report_to.split(",") if a.strip()]

    def address(self, port: int) -> str:
        return f"tcp://{self.host}:{port}"

    def advertised(self, endpoint: str) -> str:
        """A bound endpoint as others reach it: a wildcard host becomes the advertised host."""
        host = self.advertise_host or (socket.gethostname() if self.host in ("0.0.0.0", "::", "*") else "")
        return f"tcp://{host}:{endpoint.rsplit(':', 1)[1]}" if host else endpoint


HELP = {
    **ENGINE_HELP,
    "model": "checkpoint directory (only the language model and lm_head are read)",
    "device": "cpu, cuda or cuda:N",
    "dtype": "auto (the checkpoint's), bfloat16 or float32",
    "host": "interface to bind the sockets and the HTTP server to",
    "advertise_host": "host name routers and prefill workers reach this worker by, sent in load reports "
    "(default: --host; the machine's host name when --host is a wildcard such as 0.0.0.0)",
    "port": "control (PULL) port for aborts; 0 picks a free one",
    "kv_port": "KV transfer (ROUTER) port for prefill workers; 0 picks a free one",
    "http_port": "health and metrics HTTP port; 0 picks a free one",
    "max_pending": "most KV reservations waiting for room (then refused as overloaded)",
    "transfer_timeout_s": "seconds from grant to the last layer before the transfer is dropped",
    "report_to": "comma-separated router addresses that receive LoadReport messages",
    "report_interval_s": "seconds between load reports (they double as heartbeats)",
    "send_timeout_s": "seconds a send may wait for a full peer queue",
    "torch_threads": "torch intra-op threads (0: torch's default)",
    "name": "name used in errors and logs (default: the bound KV address)",
    "ready_file": "write a JSON file with the bound endpoints once serving",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
}


def parse_config(argv: Sequence[str] | None = None) -> DecodeConfig:
    return parse_flags(DecodeConfig, "python -m services.decode", "Decode worker", "DECODE_", HELP, argv)
