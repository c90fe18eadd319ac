"""The decode worker's configuration: one frozen dataclass, built once at the entry point.

Precedence: command-line flag, then environment variable (``DECODE_<FLAG>``), then the default
here (``shared.flags``; engine flags from ``shared.engine.EngineConfig``).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from shared.engine import EngineConfig
from shared.flags import ServiceFlags, flag, parse_flags
from shared.transfer import TransferConfig
from shared.wire.messages import ADDRESS


@dataclass(frozen=True, kw_only=True)
class DecodeConfig(ServiceFlags):
    advertise_host: str = flag(
        "",
        help="host name routers and prefill workers reach this worker by, sent in load reports "
        "(default: --host; the machine's host name when --host is a wildcard such as 0.0.0.0)",
    )
    port: int = flag(5800, help="control (PULL) port for aborts; 0 picks a free one")
    kv_port: int = flag(5801, help="KV transfer (ROUTER) port for prefill workers; 0 picks a free one")
    http_port: int = flag(8800, help="health and metrics HTTP port; 0 picks a free one")
    max_pending: int = flag(64, help="most KV reservations waiting for room (then refused as overloaded)")
    transfer_timeout_s: float = flag(
        30.0,
        help="seconds a granted transfer may go without a message from prefill before it is dropped "
        "(prefill gone)",
    )
    report_to: str = flag("", help="comma-separated router addresses that receive LoadReport messages")
    report_interval_s: float = flag(0.5, help="seconds between load reports (they double as heartbeats)")
    # A decode worker's steps are decode steps: compiled by default.
    engine: EngineConfig = flag(
        default_factory=partial(EngineConfig, compile_decode=True),
        help="engine flags",
    )
    transfer: TransferConfig = flag(default_factory=TransferConfig, help="KV transfer flags")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_pending < 0:
            raise ValueError("max_pending must be >= 0")
        if min(self.transfer_timeout_s, self.report_interval_s) <= 0:
            raise ValueError("timeouts and intervals must be positive")
        for address in self.report_addresses:
            if not re.fullmatch(ADDRESS, address):
                raise ValueError(f"report_to: {address!r} is not a ZMQ address")

    @property
    def report_addresses(self) -> list[str]:
        return [a.strip() for a in self.report_to.split(",") if a.strip()]

    @property
    def reachable_host(self) -> str:
        """The host others reach this worker by: --advertise-host, else the host name when bound to a
        wildcard, else --host."""
        return self.advertise_host or (
            socket.gethostname() if self.host in ("0.0.0.0", "::", "*") else self.host
        )

    def advertised(self, endpoint: str) -> str:
        """A bound endpoint as others reach it: a wildcard host becomes the advertised host."""
        return f"tcp://{self.reachable_host}:{endpoint.rsplit(':', 1)[1]}"


def parse_config(argv: Sequence[str] | None = None) -> DecodeConfig:
    return parse_flags(DecodeConfig, "python -m services.decode", "Decode worker", "DECODE_", argv)
