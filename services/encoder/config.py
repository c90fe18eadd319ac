"""The encoder's configuration: one frozen dataclass, built once at the entry point.

Precedence: command-line flag, then environment variable (``ENCODER_<FLAG>``, e.g.
``ENCODER_PATCH_BUDGET=8192``), then the default here (``shared.flags``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shared.flags import ServiceFlags, flag, parse_flags
from shared.multimodal.image import DEFAULT_MAX_IMAGE_PIXELS
from shared.vision.batcher import default_patch_budget


@dataclass(frozen=True, kw_only=True)
class EncoderConfig(ServiceFlags):
    port: int = flag(5600, help="request (ROUTER) port; 0 picks a free one")
    http_port: int = flag(8600, help="health and metrics HTTP port; 0 picks a free one")
    patch_budget: int = flag(0, help="most vision patches run in one forward (0: 4096 on cpu, 16384 on cuda)")
    cross_request_batching: bool = flag(True, help="batch images of different requests together")
    cache_bytes: int = flag(1 << 30, help="embedding cache size in bytes (0 disables it)")
    max_queued_patches: int = flag(
        65536, help="refuse new images as overloaded beyond this many waiting patches (~400 MB fp32)"
    )
    max_image_pixels: int = flag(
        DEFAULT_MAX_IMAGE_PIXELS, help="refuse images with more pixels than this (decompression bomb guard)"
    )
    max_inflight_per_peer: int = flag(
        4096, help="refuse requests as overloaded from a router with this many waiting for images here"
    )
    prepare_threads: int = flag(
        1, help="threads that decode and preprocess images while the loop runs forwards (0: in the loop)"
    )
    max_preparing: int = flag(
        64, help="images prepared at once by the threads; more are prepared in the loop"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.patch_budget < 0:
            raise ValueError("patch_budget must be >= 0 (0: the device's default)")
        if self.cache_bytes < 0 or self.max_queued_patches < 1:
            raise ValueError("cache_bytes >= 0 and max_queued_patches >= 1 are required")
        if self.max_inflight_per_peer < 1:
            raise ValueError("max_inflight_per_peer must be >= 1")
        if self.prepare_threads < 0 or self.max_preparing < 1:
            raise ValueError("prepare_threads >= 0 and max_preparing >= 1 are required")

    @property
    def batch_patches(self) -> int:
        """The patch budget in force (``--patch-budget``, else the device's default)."""
        return self.patch_budget or default_patch_budget(self.device)

    @property
    def bind_address(self) -> str:
        return self.address(self.port)


def parse_config(argv: Sequence[str] | None = None) -> EncoderConfig:
    return parse_flags(
        EncoderConfig, "python -m services.encoder", "Vision encoder service", "ENCODER_", argv
    )
