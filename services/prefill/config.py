"""The prefill worker's configuration: one frozen dataclass, built once at the entry point.

Precedence: command-line flag, then environment variable (``PREFILL_<FLAG>``, e.g.
``PREFILL_NUM_BLOCKS=512``), then the default here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from services.common.engine_setup import ENGINE_HELP, EngineFlags, check_device
from services.common.flags import parse_flags


@dataclass(frozen=True, kw_only=True)
class PrefillConfig(EngineFlags):
    model: Path
    device: str = "cpu"
    dtype: str = "auto"
    host: str = "127.0.0.1"
    port: int = 5700  # requests (ROUTER); 0 picks a free port
    inbox_port: int = 5701  # embeddings from encoders (PULL); 0 picks a free port
    http_port: int = 8700
    max_waiting: int = 1024  # requests waiting for embeddings; beyond it new ones are refused
    max_orphan_bytes: int = 1 << 30  # embeddings that arrived before their request
    orphan_ttl_s: float = 60.0  # how long such embeddings wait for their request
    max_transfers: int = 256  # prompts computed and waiting for (or in) a KV transfer
    kv_reply_timeout_s: float = 5.0  # a decode worker silent this long after a reserve or done is gone
    grant_timeout_s: float = 60.0  # how long a queued reservation may wait for room at decode
    send_timeout_s: float = 5.0
    torch_threads: int = 0  # 0: torch's default
    name: str = ""
    ready_file: Path | None = None
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        check_device(self.device, self.dtype)
        if min(self.max_waiting, self.max_transfers) < 1 or self.max_orphan_bytes < 0:
            raise ValueError("max_waiting and max_transfers must be >= 1, max_orphan_bytes >= 0")
        if min(self.kv_reply_timeout_s, self.grant_timeout_s, self.send_timeout_s, self.orphan_ttl_s) <= 0:
            raise ValueError("timeouts must be positive")

    def address(self, port: int) -> str:
        return f"tcp://{self.host}:{port}"


HELP = {
    **ENGINE_HELP,
    "model": "checkpoint directory (only the language model and lm_head are read)",
    "device": "cpu, cuda or cuda:N",
    "dtype": "auto (the checkpoint's), bfloat16 or float32",
    "host": "interface to bind the sockets and the HTTP server to",
    "port": "request (ROUTER) port; 0 picks a free one",
    "inbox_port": "embedding inbox (PULL) port for encoders; 0 picks a free one",
    "http_port": "health and metrics HTTP port; 0 picks a free one",
    "max_waiting": "most requests waiting for their embeddings",
    "max_orphan_bytes": "bytes of embeddings kept for requests not yet received",
    "orphan_ttl_s": "seconds such embeddings wait for their request",
    "max_transfers": "most computed prompts waiting for or in a KV transfer",
    "kv_reply_timeout_s": "seconds a decode worker may stay silent after a reserve or the last layer",
    "grant_timeout_s": "seconds a reservation may wait in a full decode worker's queue",
    "send_timeout_s": "seconds a send may wait for a full peer queue",
    "torch_threads": "torch intra-op threads (0: torch's default)",
    "name": "name used in errors and logs (default: the bound request address)",
    "ready_file": "write a JSON file with the bound endpoints once serving",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
}


def parse_config(argv: Sequence[str] | None = None) -> PrefillConfig:
    return parse_flags(PrefillConfig, "python -m services.prefill", "Prefill worker", "PREFILL_", HELP, argv)
