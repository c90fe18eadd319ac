"""The router's configuration: one frozen dataclass, built once at the entry point.

Precedence: command-line flag, then environment variable (``ROUTER_<FLAG>``, e.g.
``ROUTER_API_KEYS=k1,k2``), then the default here. Workers are given as comma-separated entries;
each entry is either the path of the worker's ready file (JSON, as the services write it) or its
addresses joined by ``@`` in the ready file's order:

* encoder: ``tcp://enc:5600@http://enc:8600`` (ZMQ requests @ health HTTP)
* prefill: ``tcp://pre:5700@tcp://pre:5701@http://pre:8700`` (requests @ embedding inbox @ HTTP)

Decode workers need no list: each reports its load (and addresses) to the router's inbox
(``--report-to`` on the decode side), which is how the router finds them.

``--colocated`` runs the whole model and one engine in the router's process instead
(``router/colocated.py``): no worker lists; the engine flags (``EngineFlags``), ``--device``,
``--dtype``, ``--torch-threads`` and the vision flags apply to it and are ignored otherwise.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from services.common.engine_setup import ENGINE_HELP, EngineFlags, check_device
from services.common.flags import parse_flags

ENCODER_KEYS = ("zmq", "http")
PREFILL_KEYS = ("zmq", "inbox", "http")


@dataclass(frozen=True, kw_only=True)
class RouterConfig(EngineFlags):
    model: Path
    served_model_name: str = ""  # default: the model directory's name
    host: str = "127.0.0.1"
    port: int = 8000  # 0 picks a free port
    inbox_host: str = "127.0.0.1"  # where the token / load-report inbox binds
    inbox_port: int = 5900  # 0 picks a free port
    advertise_host: str = ""  # host the workers reach the inbox by (default: inbox_host)
    encoders: str = ""
    prefills: str = ""
    api_keys: str = ""  # comma-separated; empty: no authentication
    max_images: int = 8  # per request
    max_image_bytes: int = 20 << 20
    fetch_timeout_s: float = 10.0
    allow_private_urls: bool = False  # let http(s) image URLs reach loopback / private addresses
    allow_file_urls: bool = False
    max_inflight: int = 256  # requests admitted to the cluster; beyond it: 503
    max_per_worker: int = 64  # prefill requests waiting for a first token, per worker
    request_timeout_s: float = 300.0
    heartbeat_timeout_s: float = 3.0
    max_retries: int = 2  # resubmissions of a request that failed before its first token
    start_timeout_s: float = 300.0  # wait this long for the workers' ready files
    ready_file: Path | None = None
    log_level: str = "INFO"
    # colocated mode (max_model_len, from EngineFlags, is the context length in both modes)
    colocated: bool = False
    device: str = "cpu"
    dtype: str = "auto"
    torch_threads: int = 0  # 0: torch's default
    patch_budget: int = 0  # vision patches per forward; 0: per device, as the encoder service
    image_cache_bytes: int = 1 << 30  # embedding cache; 0 disables it

    def __post_init__(self) -> None:
        if min(self.max_images, self.max_image_bytes, self.max_inflight, self.max_per_worker) < 1:
            raise ValueError("max_images, max_image_bytes, max_inflight, max_per_worker must be >= 1")
        if min(self.fetch_timeout_s, self.request_timeout_s, self.heartbeat_timeout_s) <= 0:
            raise ValueError("timeouts must be positive")
        if self.colocated:
            check_device(self.device, self.dtype)
            self.engine_config()  # raises ValueError on inconsistent engine flags
        if min(self.patch_budget, self.image_cache_bytes, self.torch_threads) < 0:
            raise ValueError("patch_budget, image_cache_bytes and torch_threads must be >= 0")

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model.name

    @property
    def batch_patches(self) -> int:
        """The patch budget in force: the encoder service's defaults (``EncoderConfig``)."""
        return self.patch_budget or (4096 if self.device == "cpu" else 16384)

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.api_keys.split(",") if k.strip())


HELP = {
    **{k: f"colocated: {v}" for k, v in ENGINE_HELP.items()},
    "model": "checkpoint directory (tokenizer, chat template, configs)",
    "served_model_name": "the model id clients use (default: the directory's name)",
    "host": "HTTP interface",
    "port": "HTTP port (0: a free one)",
    "inbox_host": "interface of the ZMQ inbox for tokens and load reports",
    "inbox_port": "ZMQ inbox port (0: a free one); decode workers --report-to it",
    "advertise_host": "host name workers reach the inbox by (default: --inbox-host)",
    "encoders": "comma-separated encoders: ready-file paths or ZMQ@HTTP",
    "prefills": "comma-separated prefill workers: ready-file paths or ZMQ@INBOX@HTTP",
    "api_keys": "comma-separated accepted Bearer keys (empty: no authentication)",
    "max_model_len": "context length (0: the model's)",
    "colocated": "run the whole model and one engine in this process (no encoders, prefill, decode)",
    "device": "colocated: cpu, cuda or cuda:N",
    "dtype": "colocated: auto (the checkpoint's), bfloat16 or float32",
    "torch_threads": "colocated: torch intra-op threads (0: torch's default)",
    "patch_budget": "colocated: vision patches per forward (0: 4096 on cpu, 16384 on cuda)",
    "image_cache_bytes": "colocated: bytes of the image embedding cache (0: off)",
    "max_images": "most images per request",
    "max_image_bytes": "largest image in bytes (data URL or download)",
    "fetch_timeout_s": "seconds to download one image URL",
    "allow_private_urls": "allow image URLs on loopback, private and link-local addresses",
    "allow_file_urls": "allow file:// image URLs (reads the router's disk)",
    "max_inflight": "most requests in the cluster at once (then 503)",
    "max_per_worker": "most requests waiting for prefill per worker (then 503)",
    "request_timeout_s": "seconds a request may take end to end",
    "heartbeat_timeout_s": "a decode worker silent this long is taken as gone",
    "max_retries": "resubmissions of a request that failed before any token reached the client",
    "start_timeout_s": "seconds to wait for the workers' ready files",
    "ready_file": "write a JSON file with the HTTP URL once the cluster is ready",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
}


def parse_config(argv: Sequence[str] | None = None) -> RouterConfig:
    return parse_flags(RouterConfig, "python -m router", "OpenAI-compatible router", "ROUTER_", HELP, argv)


def parse_workers(spec: str, keys: tuple[str, ...], timeout_s: float) -> list[dict[str, str]]:
    """Worker entries to dicts with ``keys``; ready files are waited for up to ``timeout_s``."""
    out = []
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        if entry.startswith("tcp://"):
            parts = entry.split("@")
            if len(parts) > len(keys) or len(parts) < len(keys) - 1:
                raise ValueError(f"{entry!r}: expected {'@'.join(k.upper() for k in keys)}")
            out.append(dict(zip(keys, parts, strict=False)))
            continue
        out.append(_wait_ready_file(Path(entry), keys, timeout_s))
    return out


def _wait_ready_file(path: Path, keys: tuple[str, ...], timeout_s: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            info = json.loads(path.read_text())
            return {k: str(info[k]) for k in keys if k in info}
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no ready file {path} after {timeout_s:.0f}s") from None
            time.sleep(0.1)
