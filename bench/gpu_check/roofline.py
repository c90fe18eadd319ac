"""Section 1: the rooflines measured on the device (copy bandwidth, a large GEMM's FLOP/s)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.gpu_check.common import (
    Preset,
    Report,
    seconds_per_call,
    si,
)


@dataclass(frozen=True)
class Roofline:
    bandwidth: float  # bytes/s, read + write of a device-to-device copy
    flops: float  # FLOP/s of one large GEMM


def copy_seconds(num_bytes: int, device: torch.device) -> float:
    src = torch.empty(num_bytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    return seconds_per_call(lambda: dst.copy_(src), device, 20)


def measure_roofline(rep: Report, device: torch.device, p: Preset, dtype: torch.dtype) -> Roofline:
    bandwidth = 2 * p.copy_bytes / copy_seconds(p.copy_bytes, device)
    n = p.gemm_n
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    out = torch.empty(n, n, device=device, dtype=dtype)
    t = seconds_per_call(lambda: torch.mm(a, b, out=out), device, 20)
    flops = 2 * n**3 / t
    rep.line(f"- copy {p.copy_bytes >> 20} MiB device to device: {si(bandwidth, 'B/s')} (read + write)")
    rep.line(f"- GEMM {n}^3 {str(dtype).removeprefix('torch.')}: {si(flops, 'FLOP/s')}")
    return Roofline(bandwidth, flops)
