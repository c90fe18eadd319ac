"""The decode worker's configuration: one frozen dataclass, built once at the entry point.

Precedence: command-line flag, then environment variable (``DECODE_<FLAG>``), then the default
here (``shared.flags``; engine flags from ``shared.engine.EngineConfig``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from shared.engine import EngineConfig
from shared.flags import ServiceFlags, flag, parse_flags
from shared.transfer import TransferConfig
from shared.wire.messages.tokens import MAX_RECORD_TOKENS


@dataclass(frozen=True, kw_only=True)
class DecodeConfig(ServiceFlags):
    port: int = flag(5800, help="control (PULL) port for aborts; 0 picks a free one")
    kv_port: int = flag(5801, help="KV transfer (ROUTER) port for prefill workers; 0 picks a free one")
    http_port: int = flag(8800, help="health and metrics HTTP port; 0 picks a free one")
    max_pending: int = flag(64, help="most KV reservations waiting for room (then refused as overloaded)")
    transfer_timeout_s: float = flag(
        30.0,
        help="seconds a granted transfer may go without a message from prefill before it is dropped "
        "(prefill gone)",
    )
    stream_interval: int = flag(
        4,
        help="tokens per record sent to the router: a request's tokens are held until this many "
        "are there or it finishes (fewer messages and SSE chunks; the first token, from prefill, "
        "is never held; 4 served 1.19x the requests/s of 1 on the demo model, docs/BENCHMARKS.md)",
    )
    step_interval_ms: float = flag(
        0.0,
        help="least time between the starts of two decode steps, receiving meanwhile (0: back to "
        "back). Where the stages share a machine's cores, a few ms leaves CPU to encode and prefill: "
        "fuller steps and a lower TTFT for a higher TPOT (docs/BENCHMARKS.md)",
    )
    # A decode worker's steps are decode steps: compiled by default.
    engine: EngineConfig = flag(
        default_factory=partial(EngineConfig, compile_decode=True),
        help="engine flags",
    )
    transfer: TransferConfig = flag(default_factory=TransferConfig, help="KV transfer flags")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.transfer.check_security(self.host, secured=self.curve_keys is not None)
        if self.max_pending < 0:
            raise ValueError("max_pending must be >= 0")
        if self.transfer_timeout_s <= 0:
            raise ValueError("transfer_timeout_s must be positive")
        if not 0 <= self.step_interval_ms <= 1000:
            raise ValueError("step_interval_ms must be within 0..1000")
        if not 1 <= self.stream_interval <= MAX_RECORD_TOKENS:
            raise ValueError(f"stream_interval must be within 1..{MAX_RECORD_TOKENS}")


def parse_config(argv: Sequence[str] | None = None) -> DecodeConfig:
    return parse_flags(DecodeConfig, "python -m services.decode", "Decode worker", "DECODE_", argv)
