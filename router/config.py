"""The router's configuration: one frozen dataclass, built once at the entry point.

Precedence: command-line flag, then environment variable (``ROUTER_<FLAG>``, e.g.
``ROUTER_API_KEYS=k1,k2``), then the default here. Workers are given as comma-separated entries;
each entry is either the path of the worker's ready file (JSON, as the services write it) or its
addresses joined by ``@`` in the ready file's order:

* encoder: ``tcp://enc:5600@http://enc:8600`` (ZMQ requests @ health HTTP)
* prefill: ``tcp://pre:5700@tcp://pre:5701@http://pre:8700`` (requests @ embedding inbox @ HTTP)

Lists are optional: a worker started with ``--report-to`` naming this router's inbox registers
itself with its first load report (decode workers always do), so a router with no lists learns
the whole cluster (Kubernetes: workers report to the routers' headless Service).

``--colocated`` runs the whole model and one engine in the router's process instead
(``router/colocated.py``): no worker lists; the engine flags (``EngineConfig``), ``--device``,
``--dtype``, ``--torch-threads`` and the vision flags apply to it and are ignored otherwise.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from shared.assets import DEMO_MODEL_DIR
from shared.engine import EngineConfig
from shared.flags import check_device, flag, parse_flags
from shared.vision.batcher import default_patch_budget

ENCODER_KEYS = ("zmq", "http")
PREFILL_KEYS = ("zmq", "inbox", "http")


@dataclass(frozen=True, kw_only=True)
class RouterConfig:
    model: Path = flag(
        DEMO_MODEL_DIR, help="checkpoint directory: tokenizer, chat template, configs (default: the demo)"
    )
    served_model_name: str = flag("", help="the model id clients use (default: the directory's name)")
    host: str = flag("127.0.0.1", help="HTTP interface")
    port: int = flag(8000, help="HTTP port (0: a free one)")
    inbox_host: str = flag("127.0.0.1", help="interface of the ZMQ inbox for tokens and load reports")
    inbox_port: int = flag(5900, help="ZMQ inbox port (0: a free one); decode workers --report-to it")
    advertise_host: str = flag("", help="host name workers reach the inbox by (default: --inbox-host)")
    encoders: str = flag(
        "", help="comma-separated encoders: ready-file paths or ZMQ@HTTP (more register with --report-to)"
    )
    prefills: str = flag(
        "",
        help="comma-separated prefill workers: ready-file paths or ZMQ@INBOX@HTTP (more register themselves)",
    )
    api_keys: str = flag("", help="comma-separated accepted Bearer keys (empty: no authentication)")
    generation_config: str = flag(
        "auto",
        help="sampling defaults of requests that leave temperature, top_p, top_k, min_p, a penalty or max_tokens out: "
        "auto (the model's generation_config.json, as vLLM) or none (OpenAI's)",
    )
    max_images: int = flag(8, help="most images per request")
    max_image_bytes: int = flag(20 << 20, help="largest image in bytes (data URL or download)")
    max_videos: int = flag(2, help="most videos per request (0: refuse video)")
    max_video_bytes: int = flag(
        32 << 20, help="largest video in bytes (file, or all its frames); at most 63 MiB"
    )
    max_video_seconds: float = flag(600.0, help="longest video in seconds (frames / the file's frame rate)")
    fetch_timeout_s: float = flag(10.0, help="seconds to download one image or video URL")
    allow_private_urls: bool = flag(
        False, help="allow image URLs on loopback, private and link-local addresses"
    )
    allow_file_urls: bool = flag(False, help="allow file:// image URLs (reads the router's disk)")
    max_inflight: int = flag(256, help="most requests in the cluster at once (then 503)")
    max_per_worker: int = flag(64, help="most requests waiting for prefill per worker (then 503)")
    request_timeout_s: float = flag(300.0, help="seconds a request may take end to end")
    drain_timeout_s: float = flag(
        30.0, help="on SIGTERM: stop accepting, and give the open requests and streams this long to finish"
    )
    heartbeat_timeout_s: float = flag(3.0, help="a worker whose load reports stop this long is taken as gone")
    max_retries: int = flag(
        2,
        help="resubmissions of a request whose worker failed or died: before its first token a retry, "
        "after it a migration (the prompt and the tokens streamed so far, continued elsewhere)",
    )
    start_timeout_s: float = flag(300.0, help="seconds to wait for the workers' ready files")
    ready_file: Path | None = flag(None, help="write a JSON file with the HTTP URL once the cluster is ready")
    log_level: str = flag("INFO", help="DEBUG, INFO, WARNING or ERROR")
    curve_keys: Path | None = flag(
        None,
        help="CurveZMQ key directory (`epd keys DIR`): the inbox and the sockets to workers encrypted "
        "and authenticated (the workers need the same set); without it they are plain",
    )
    otlp_traces_endpoint: str = flag(
        "", help="OTLP/HTTP traces URL, e.g. http://collector:4318/v1/traces (empty: no tracing)"
    )
    colocated: bool = flag(
        False, help="run the whole model and one engine in this process (no encoders, prefill, decode)"
    )
    device: str = flag("cpu", help="colocated: cpu, cuda or cuda:N")
    dtype: str = flag("auto", help="colocated: auto (the checkpoint's), bfloat16 or float32")
    torch_threads: int = flag(0, help="colocated: torch intra-op threads (0: torch's default)")
    patch_budget: int = flag(0, help="colocated: vision patches per forward (0: 4096 on cpu, 16384 on cuda)")
    image_cache_bytes: int = flag(1 << 30, help="colocated: bytes of the image embedding cache (0: off)")
    # --max-model-len is the context length in both modes; the other engine flags apply to colocated
    # Colocated, the engine decodes: its decode steps compiled by default.
    engine: EngineConfig = flag(
        default_factory=partial(EngineConfig, compile_decode=True),
        help="engine flags",
    )

    def __post_init__(self) -> None:
        if min(self.max_images, self.max_image_bytes, self.max_inflight, self.max_per_worker) < 1:
            raise ValueError("max_images, max_image_bytes, max_inflight, max_per_worker must be >= 1")
        if (
            min(self.fetch_timeout_s, self.request_timeout_s, self.heartbeat_timeout_s, self.drain_timeout_s)
            <= 0
        ):
            raise ValueError("timeouts must be positive")
        if self.colocated:
            check_device(self.device, self.dtype)
        if self.max_videos < 0 or not 0 < self.max_video_bytes <= 63 << 20 or self.max_video_seconds <= 0:
            raise ValueError("max_videos must be >= 0, max_video_bytes in (0, 63 MiB], max_video_seconds > 0")
        if min(self.patch_budget, self.image_cache_bytes, self.torch_threads) < 0:
            raise ValueError("patch_budget, image_cache_bytes and torch_threads must be >= 0")
        if self.generation_config not in ("auto", "none"):
            raise ValueError(f"generation_config must be auto or none, got {self.generation_config!r}")

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model.name

    @property
    def batch_patches(self) -> int:
        """The patch budget in force: the encoder service's defaults."""
        return self.patch_budget or default_patch_budget(self.device)

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.api_keys.split(",") if k.strip())


def parse_config(argv: Sequence[str] | None = None) -> RouterConfig:
    return parse_flags(RouterConfig, "python -m router", "OpenAI-compatible router", "ROUTER_", argv)


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
