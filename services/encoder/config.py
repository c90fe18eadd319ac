"""The encoder's configuration: one frozen dataclass, built once at the entry point.

Precedence: command-line flag, then environment variable (``ENCODER_<FLAG>``, e.g.
``ENCODER_PATCH_BUDGET=8192``), then the default here.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from shared.multimodal.image import DEFAULT_MAX_IMAGE_PIXELS

ENV_PREFIX = "ENCODER_"


@dataclass(frozen=True)
class EncoderConfig:
    model: Path
    device: str = "cpu"  # cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | bfloat16 | float32
    host: str = "127.0.0.1"  # interface the request socket binds
    port: int = 5600  # request socket (ROUTER); 0 picks a free port
    http_port: int = 8600  # /health, /ready, /metrics; 0 picks a free port
    patch_budget: int = 0  # vision patches per forward (a 1024x1024 image is 4096); 0: per device
    cross_request_batching: bool = True  # False: a batch holds images of one request only
    cache_bytes: int = 1 << 30  # embedding cache bound; 0 disables the cache
    max_queued_patches: int = 65536  # ~400 MB of fp32 patches; beyond it new images are refused
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    send_timeout_s: float = 5.0  # how long a result may wait for a full prefill inbox
    torch_threads: int = 0  # 0: leave torch's default
    name: str = ""  # how this encoder names itself in errors and logs; default: its address
    ready_file: Path | None = None  # written (JSON: endpoints, pid) once the encoder serves
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "bfloat16", "float32"):
            raise ValueError(f"dtype must be auto, bfloat16 or float32, got {self.dtype!r}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be cpu or cuda[:N], got {self.device!r}")
        if self.patch_budget < 0:
            raise ValueError("patch_budget must be >= 0 (0: the device's default)")
        if self.cache_bytes < 0 or self.max_queued_patches < 1 or self.send_timeout_s <= 0:
            raise ValueError("cache_bytes >= 0, max_queued_patches >= 1 and send_timeout_s > 0 are required")

    @property
    def batch_patches(self) -> int:
        """The patch budget in force. CPU default measured in docs/BENCHMARKS.md: past ~4096 patches
        a CPU forward loses cache locality; a GPU wants large batches to fill its SMs."""
        if self.patch_budget:
            return self.patch_budget
        return 4096 if self.device == "cpu" else 16384

    @property
    def bind_address(self) -> str:
        return f"tcp://{self.host}:{self.port}"


_HELP = {
    "model": "checkpoint directory (only model.visual.* and preprocessor_config.json are read)",
    "device": "cpu, cuda or cuda:N",
    "dtype": "auto (the checkpoint's), bfloat16 or float32",
    "host": "interface to bind the request socket and the HTTP server to",
    "port": "request (ROUTER) port; 0 picks a free one",
    "http_port": "health and metrics HTTP port; 0 picks a free one",
    "patch_budget": "most vision patches run in one forward (0: 4096 on cpu, 16384 on cuda)",
    "cross_request_batching": "batch images of different requests together",
    "cache_bytes": "embedding cache size in bytes (0 disables it)",
    "max_queued_patches": "refuse new images as overloaded beyond this many waiting patches",
    "max_image_pixels": "refuse images with more pixels than this (decompression bomb guard)",
    "send_timeout_s": "seconds a result may wait for a full prefill inbox",
    "torch_threads": "torch intra-op threads (0: torch's default)",
    "name": "name used in errors and logs (default: the bound address)",
    "ready_file": "write a JSON file with the bound endpoints once serving",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
}


def _env(name: str) -> str | None:
    return os.environ.get(ENV_PREFIX + name.upper())


def parse_config(argv: Sequence[str] | None = None) -> EncoderConfig:
    parser = argparse.ArgumentParser(prog="python -m services.encoder", description="Vision encoder service")
    for f in fields(EncoderConfig):
        flag = "--" + f.name.replace("_", "-")
        env = _env(f.name)
        if f.type in ("bool", bool):
            default = f.default if env is None else env.lower() in ("1", "true", "yes", "on")
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=_HELP[f.name]
            )
            continue
        kind = {"int": int, "float": float}.get(str(f.type), str)
        required = f.name == "model" and env is None
        default = None if f.name == "model" and env is None else (kind(env) if env is not None else f.default)
        parser.add_argument(flag, type=kind, default=default, required=required, help=_HELP[f.name])
    args = vars(parser.parse_args(argv))
    args["model"] = Path(args["model"])
    if args["ready_file"]:
        args["ready_file"] = Path(args["ready_file"])
    try:
        return EncoderConfig(**args)
    except ValueError as e:
        parser.error(str(e))
        raise  # unreachable: parser.error exits
