"""Paged attention on the CPU: the gather backend against the gather-free FlexAttention backend.

    python bench/attention_bench.py [--threads 1] [--repeats 5] [--block-size 16]

Times one layer call, ``forward(layer, q, k, v)`` (store the new K/V in the pool, attend), of
``PagedAttention`` (copies each sequence's blocks into a padded tensor, then SDPA) and of
``FlexPagedAttention`` (compiled FlexAttention over the pool where it lies), fp32, for:
  decode 32x160    32 decodes, 160-token contexts
  decode 64x2k     64 decodes, 2048-token contexts
  prefill 512+1k   one chunk of 512 new tokens after 1024 cached
  mixed 256+31     one chunk of 256 new tokens after 768 cached, and 31 decodes at 1024
at the shapes of the default tiny checkpoint (Hq 4, Hkv 2, D 16) and of Qwen3-VL-30B-A3B (Hq 32,
Hkv 4, D 128). Blocks are scattered over one pool per shape, sized for the largest case (one pool:
one compile per shape; the first compile is reported). The two backends alternate and each figure
is the best of ``--repeats``, so that load from other processes hits both alike. "step setup" is
the per-step metadata each builds once for all layers (the gather groups; the block mask).

Prints a Markdown table; ``gather / flex`` above 1 means flex is faster.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.engine.flex_attention import FlexPagedAttention, build_block_mask  # noqa: E402
from shared.engine.kv_pool import KVPool  # noqa: E402
from shared.engine.paged_attention import PagedAttention  # noqa: E402

SHAPES = {"tiny (4/2/16)": (4, 2, 16), "30B-A3B (32/4/128)": (32, 4, 128)}  # Hq, Hkv, D
CASES = {  # (cached tokens, new tokens) per sequence
    "decode 32x160": [(159, 1)] * 32,
    "decode 64x2k": [(2047, 1)] * 64,
    "prefill 512+1k": [(1024, 512)],
    "mixed 256+31": [(768, 256)] + [(1023, 1)] * 31,
}


@dataclass
class Row:
    shape: str
    case: str
    tokens: int
    gather_ms: float
    flex_ms: float
    gather_setup_ms: float
    flex_setup_ms: float


def best_of(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Milliseconds, best of ``repeats`` runs of each, the functions alternating."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return [b * 1e3 for b in best]


def blocks_needed(shapes: list[tuple[int, int]], block_size: int) -> int:
    return sum(-(-(c + n) // block_size) for c, n in shapes)


def run_case(
    pool: KVPool, hq: int, shapes: list[tuple[int, int]], repeats: int, gen: torch.Generator
) -> tuple[float, float, float, float]:
    """(gather ms, flex ms, gather setup ms, flex setup ms) of one batch on one pool layer."""
    bs, hkv, d = pool.block_size, pool.k.shape[3], pool.k.shape[4]
    free = torch.randperm(pool.num_blocks, generator=gen).tolist()
    tables = [[free.pop() for _ in range(-(-(c + n) // bs))] for c, n in shapes]
    lens, seq_lens = [n for _, n in shapes], [c + n for c, n in shapes]
    slots = torch.tensor(
        [s for (c, n), t in zip(shapes, tables, strict=True) for s in pool.slot_ids(t, c, c + n)]
    )
    tokens = sum(lens)
    q = torch.randn(tokens, hq, d, generator=gen)
    k, v = torch.randn(2, tokens, hkv, d, generator=gen)
    args = (pool, lens, seq_lens, tables, slots, d**-0.5)
    gather, flex = PagedAttention(*args), FlexPagedAttention(*args)
    flex.forward(0, q, k, v)  # builds its block mask
    calls = best_of([lambda: gather.forward(0, q, k, v), lambda: flex.forward(0, q, k, v)], repeats)
    setups = best_of(
        [lambda: PagedAttention(*args), lambda: build_block_mask(pool, hq // hkv, lens, seq_lens, tables)],
        repeats,
    )
    return calls[0], calls[1], setups[0], setups[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--block-size", type=int, default=16)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    gen = torch.Generator().manual_seed(0)
    bs = a.block_size
    num_blocks = max(blocks_needed(shapes, bs) for shapes in CASES.values()) + 8
    rows: list[Row] = []
    with torch.inference_mode():
        for shape, (hq, hkv, d) in SHAPES.items():
            pool = KVPool(1, num_blocks, bs, hkv, d, torch.float32, torch.device("cpu"))
            pool.k.normal_(generator=gen)
            pool.v.normal_(generator=gen)
            start = time.perf_counter()
            run_case(pool, hq, [(3, 1)], 1, gen)  # compiles for this shape and pool
            print(f"{shape}: first flex call (compile) {time.perf_counter() - start:.1f} s", flush=True)
            for case, shapes in CASES.items():
                times = run_case(pool, hq, shapes, a.repeats, gen)
                rows.append(Row(shape, case, sum(n for _, n in shapes), *times))
                print(f"  {case}: gather {times[0]:.2f} ms, flex {times[1]:.2f} ms", flush=True)
    print(f"\nfp32, {a.threads} thread(s), block size {bs}, pool {num_blocks} blocks, best of {a.repeats}\n")
    print(
        "| shape (Hq/Hkv/D) | batch | T | gather ms | flex ms | gather / flex | step setup gather / flex ms |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r.shape} | {r.case} | {r.tokens} | {r.gather_ms:.2f} | {r.flex_ms:.2f} | "
            f"{r.gather_ms / r.flex_ms:.2f} | {r.gather_setup_ms:.2f} / {r.flex_setup_ms:.2f} |"
        )


if __name__ == "__main__":
    main()
