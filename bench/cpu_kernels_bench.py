"""The CPU's C decode kernels (``shared/engine/cpu_kernels.py``) against the library paths they replace.

    python bench/cpu_kernels_bench.py [--threads 1] [--repeats 5] [--dtype float32]

Attention: one layer's decode attention over a paged pool whose blocks are scattered, the gather op
(``epd::gather_decode_attention``: blocks copied out, then SDPA) against ``epd::paged_decode_attention``
(blocks read in place), for 32 decodes over 160-token contexts and 64 over 2k, at the head sizes of
the default tiny checkpoint, the engine bench's large random one and Qwen3-VL-30B-A3B.

Experts: one MoE layer's routed experts for T tokens, ``torch._grouped_mm`` (the grouped GEMM kernel)
against the C kernel, at the same three widths. Weights are read cold, as in a decode step where
the other layers' weights pass through the caches in between: each call takes the next of enough
copies of the layer to exceed the last-level cache (at least 256 MiB, at most 8 copies).

The two sides alternate and each figure is the best of ``--repeats``. Prints a Markdown table;
``library / C`` above 1 means the C kernel is faster.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.engine import cpu_kernels  # noqa: E402
from shared.engine.decode_graph import gather_decode_attention  # noqa: E402
from shared.engine.moe_kernels import grouped_mm_experts  # noqa: E402

ATTENTION = {"tiny (4/2/16)": (4, 2, 16), "large (8/4/64)": (8, 4, 64), "30B-A3B (32/4/128)": (32, 4, 128)}
DECODES = {"decode 32x160": (32, 160), "decode 64x2k": (64, 2048)}
EXPERTS = {  # E, H, I, K
    "tiny (8 x 64/48, top 2)": (8, 64, 48, 2),
    "large (32 x 512/192, top 4)": (32, 512, 192, 4),
    "30B-A3B (128 x 2048/768, top 8)": (128, 2048, 768, 8),
}
BLOCK = 16
COLD_BYTES = 256 << 20


def best_of(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Microseconds, best of ``repeats`` calls of each, the functions alternating (one warm-up)."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], (time.perf_counter() - start) * 1e6)
    return best


def attention_rows(dtype: torch.dtype, repeats: int) -> list[str]:
    rows = []
    g = torch.Generator().manual_seed(0)
    for shape, (hq, hkv, d) in ATTENTION.items():
        for case, (batch, context) in DECODES.items():
            width = -(-context // BLOCK)
            blocks = batch * width + 8
            k = torch.randn(blocks * BLOCK, hkv, d, generator=g).to(dtype)
            v = torch.randn(blocks * BLOCK, hkv, d, generator=g).to(dtype)
            tables = torch.randperm(blocks, generator=g)[: batch * width].view(batch, width).int()
            lengths = torch.full((batch,), context, dtype=torch.int32)
            q = torch.randn(batch, hq, d, generator=g).to(dtype)
            args = (q, k, v, tables, lengths, BLOCK, d**-0.5)
            calls = [functools.partial(gather_decode_attention, *args), functools.partial(cpu_kernels.paged_decode_attention, *args)]  # fmt: skip
            lib, c = best_of(calls, repeats)
            rows.append(f"| attention | {shape} | {case} | {lib:,.0f} | {c:,.0f} | {lib / c:.2f}x |")
            print(rows[-1], flush=True)
    return rows


def cold(fn: Callable[..., torch.Tensor], layers: list, x, ids, weights) -> Callable[[], torch.Tensor]:
    """A call of ``fn`` on the next copy of the layer's weights at each call."""
    cycle = itertools.cycle(layers)
    return lambda: fn(x, *next(cycle), ids, weights)


def experts_rows(dtype: torch.dtype, repeats: int, tokens: list[int]) -> list[str]:
    rows = []
    g = torch.Generator().manual_seed(1)
    for shape, (e, h, i, k) in EXPERTS.items():
        layer_bytes = e * 3 * h * i * torch.empty((), dtype=dtype).element_size()
        copies = max(1, min(8, -(-COLD_BYTES // layer_bytes)))
        layers = [
            ((torch.randn(e, h, 2 * i, generator=g) / h**0.5).to(dtype), (torch.randn(e, i, h, generator=g) / i**0.5).to(dtype))
            for _ in range(copies)
        ]  # fmt: skip
        for t in tokens:
            x = torch.randn(t, h, generator=g).to(dtype)
            ids = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(t)])
            weights = torch.softmax(torch.randn(t, k, generator=g), -1).to(dtype)
            calls = [
                cold(fn, layers, x, ids, weights) for fn in (grouped_mm_experts, cpu_kernels.routed_experts)
            ]
            lib, c = best_of(calls, repeats)
            rows.append(f"| experts | {shape} | T={t} | {lib:,.0f} | {c:,.0f} | {lib / c:.2f}x |")
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 32])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.dtype}, best of {args.repeats}\n")
    print("| kernel | shape | case | library us | C us | library / C |\n|---|---|---|---:|---:|---:|")
    rows = attention_rows(dtype, args.repeats) + experts_rows(dtype, args.repeats, args.tokens)
    print(
        "\n"
        + "\n".join(
            [
                "| kernel | shape | case | library us | C us | library / C |",
                "|---|---|---|---:|---:|---:|",
                *rows,
            ]
        )
    )


if __name__ == "__main__":
    main()
