"""What every section of the GPU check shares: presets (the real widths and a tiny CPU one), the
Markdown report, timing helpers."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

FULL_LAYERS = 48  # Qwen3-VL-30B-A3B
BLOCK = 16
TEXT_VOCAB = 151643  # ids below every special token: random prompts never hold an image token
REL_TOL = {torch.bfloat16: 2e-2, torch.float32: 1e-5}
# (cached, new) tokens per sequence: chunks from nothing, after a partial block and on a long cache;
# decodes that fill a block's last slot (47), open a new block (48) or sit mid-block.
ATTENTION_BATCH = [(0, 70), (37, 27), (200, 64), (47, 1), (48, 1), (63, 1), (500, 1)]


@dataclass(frozen=True)
class Preset:
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    experts: int
    top_k: int
    expert_ffn: int
    vocab: int
    layers: int
    mrope: tuple[int, int, int]
    contexts: tuple[int, ...]
    batches: tuple[int, ...]
    copy_bytes: int
    gemm_n: int
    warmup_steps: int
    timed_steps: int


PRESETS = {
    "full": Preset(
        hidden=2048, heads=32, kv_heads=4, head_dim=128, experts=128, top_k=8, expert_ffn=768,
        vocab=151936, layers=4, mrope=(24, 20, 20), contexts=(2048, 8192), batches=(1, 16, 64),
        copy_bytes=2 << 30, gemm_n=8192, warmup_steps=3, timed_steps=10,
    ),
    "tiny": Preset(
        hidden=64, heads=4, kv_heads=2, head_dim=16, experts=8, top_k=2, expert_ffn=48,
        vocab=1024, layers=2, mrope=(4, 2, 2), contexts=(64, 128), batches=(1, 4),
        copy_bytes=64 << 20, gemm_n=256, warmup_steps=1, timed_steps=3,
    ),
}  # fmt: skip


class Report:
    """Markdown on stdout as it is measured; counts the FAILED checks."""

    def __init__(self) -> None:
        self.failures = 0

    def section(self, title: str) -> None:
        print(f"\n## {title}\n", flush=True)

    def line(self, text: str = "") -> None:
        print(text, flush=True)

    def check(self, ok: bool, text: str) -> None:
        self.failures += not ok
        self.line(f"- {'ok' if ok else 'FAILED'}: {text}")

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.line("| " + " | ".join(header) + " |")
        self.line("|" + "---|" * len(header))
        for row in rows:
            self.line("| " + " | ".join(row) + " |")


def si(x: float, unit: str = "") -> str:
    """3 significant digits with a decimal prefix: ``si(2.5e12, "FLOP/s")`` is ``2.5 TFLOP/s``."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm up
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats
