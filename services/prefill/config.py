"""The prefill worker's configuration: one frozen dataclass, built once at the entry point.

Precedence: command-line flag, then environment variable (``PREFILL_<FLAG>``, e.g.
``PREFILL_NUM_BLOCKS=512``), then the default here (``shared.flags``; engine flags from
``shared.engine.EngineConfig``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shared.engine import EngineConfig
from shared.flags import ServiceFlags, flag, parse_flags
from shared.transfer import TransferConfig


@dataclass(frozen=True, kw_only=True)
class PrefillConfig(ServiceFlags):
    port: int = flag(5700, help="request (ROUTER) port; 0 picks a free one")
    inbox_port: int = flag(5701, help="embedding inbox (PULL) port for encoders; 0 picks a free one")
    http_port: int = flag(8700, help="health and metrics HTTP port; 0 picks a free one")
    max_waiting: int = flag(1024, help="most requests waiting for their embeddings (then refused)")
    max_orphan_bytes: int = flag(1 << 30, help="bytes of embeddings kept for requests not yet received")
    orphan_ttl_s: float = flag(60.0, help="seconds such embeddings wait for their request")
    max_transfers: int = flag(256, help="most computed prompts waiting for or in a KV transfer")
    max_inflight_per_peer: int = flag(
        4096, help="refuse requests as overloaded from a router with this many in flight here"
    )
    kv_reply_timeout_s: float = flag(
        5.0, help="seconds a decode worker may stay silent after a reserve or the last layer (then gone)"
    )
    grant_timeout_s: float = flag(60.0, help="seconds a reservation may wait in a full decode worker's queue")
    kv_pipeline: bool = flag(
        True,
        help="reserve at the decode worker after a prompt's first chunk and ship each chunk's KV while "
        "the next computes (--no-kv-pipeline: all of it after the first token)",
    )
    engine: EngineConfig = flag(default_factory=EngineConfig, help="engine flags")
    transfer: TransferConfig = flag(default_factory=TransferConfig, help="KV transfer flags")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.transfer.check_security(self.host, secured=self.curve_keys is not None)
        if min(self.max_waiting, self.max_transfers, self.max_inflight_per_peer) < 1:
            raise ValueError("max_waiting, max_transfers and max_inflight_per_peer must be >= 1")
        if self.max_orphan_bytes < 0:
            raise ValueError("max_orphan_bytes must be >= 0")
        if min(self.kv_reply_timeout_s, self.grant_timeout_s, self.orphan_ttl_s) <= 0:
            raise ValueError("timeouts must be positive")


def parse_config(argv: Sequence[str] | None = None) -> PrefillConfig:
    return parse_flags(PrefillConfig, "python -m services.prefill", "Prefill worker", "PREFILL_", argv)
