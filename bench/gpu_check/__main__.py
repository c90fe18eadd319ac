"""The command: ``python -m bench.gpu_check`` (flags in ``bench/gpu_check/__init__.py``)."""

from __future__ import annotations

import argparse
import platform
import sys
import time
import traceback
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # `python bench/gpu_check` too


from bench import gpu_check
from bench.gpu_check.checks import check_attention, check_handoff
from bench.gpu_check.common import PRESETS, Report, synchronize
from bench.gpu_check.model import Sizes, describe_model, model_config, random_language_model
from bench.gpu_check.roofline import Roofline, measure_roofline
from bench.gpu_check.timing import Bench, time_engine


def header(rep: Report, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> None:
    try:
        triton = metadata.version("triton")
    except metadata.PackageNotFoundError:
        triton = "not installed"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    rep.line("# GPU check: Qwen3-VL-MoE engine")
    rep.line()
    rep.line(
        f"- device: {device} ({name}); torch {torch.__version__} (CUDA {torch.version.cuda}); triton {triton}"
    )
    rep.line(
        f"- preset {args.preset}, {args.layers} layers, {str(dtype).removeprefix('torch.')}, "
        f"compile {'on' if args.compile else 'off'}, fill {args.fill}, threads {torch.get_num_threads()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_check", description=gpu_check.__doc__.split("\n")[0]
    )
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full", help="widths and sizes")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers built (default: preset's)")
    parser.add_argument(
        "--dtype",
        choices=("bfloat16", "float32"),
        default=None,
        help="model dtype (default: bfloat16 on cuda, float32 on cpu)",
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also the compiled decode step and FlexPagedAttention (torch.compile)",
    )
    parser.add_argument(
        "--fill",
        choices=("auto", "prefill", "import"),
        default="auto",
        help="how decode contexts are filled (auto: prefill unless over --fill-budget)",
    )
    parser.add_argument("--fill-budget", type=float, default=20.0, help="seconds one context's fill may take")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=270.0,
        help="seconds after the start past which no further timing row starts (rows are reported skipped)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    p = PRESETS[args.preset]
    args.layers = args.layers or p.layers
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    if args.threads:
        torch.set_num_threads(args.threads)
    rep = Report()
    header(rep, args, device, dtype)
    begin = time.perf_counter()

    def section(title: str, run: Callable[[], object]) -> object:
        rep.section(title)
        start = time.perf_counter()
        try:
            result = run()
        except Exception:
            rep.check(False, f"{title} raised:\n\n```\n{traceback.format_exc()}```")
            return None
        rep.line(f"\n_{time.perf_counter() - start:.1f} s_")
        return result

    roof = section("1. Roofline probes", lambda: measure_roofline(rep, device, p, dtype))

    def build() -> Bench:
        start = time.perf_counter()
        model = random_language_model(model_config(p, args.layers), dtype, device, args.seed)
        synchronize(device)
        rep.line(
            f"Language model built in {time.perf_counter() - start:.1f} s: hidden {p.hidden}, "
            f"heads {p.heads}/{p.kv_heads} x {p.head_dim}, {p.experts} experts top-{p.top_k} of FFN "
            f"{p.expert_ffn}, vocab {p.vocab}, MRoPE {list(p.mrope)} theta 5e6\n"
        )
        sizes = Sizes.of(model)
        describe_model(rep, sizes, args.layers, dtype)
        assert isinstance(roof, Roofline), "no roofline measured"
        deadline = begin + args.time_limit
        return Bench(model, sizes, roof, p, args.layers, args.fill, args.fill_budget, deadline)

    bench = section("2. Model", build)
    section(
        "3. Paged attention vs the contiguous reference",
        lambda: check_attention(rep, device, p, args.compile),
    )
    section(f"4. KV handoff: CPU -> {device.type}", lambda: check_handoff(rep, device, args.seed))
    if isinstance(bench, Bench):
        section("5. Engine step times", lambda: time_engine(rep, bench, args.compile))
    else:
        rep.section("5. Engine step times")
        rep.check(False, "no model was built")
    verdict = f"{rep.failures} check(s) FAILED" if rep.failures else "all checks passed"
    rep.line(f"\nTotal {time.perf_counter() - begin:.0f} s; {verdict}")
    return 1 if rep.failures else 0


if __name__ == "__main__":
    sys.exit(main())
