"""``python -m bench.sampler_bench [--base REV]``: what the sampler costs per engine step.

Times ``shared.engine.sampler.Sampler`` at the demo's vocabulary (576) and at Qwen3's (151,936) on
rows shaped like a trained model's (probabilities falling as rank^-1.5, in a random order: the
1,024 largest hold ~98% of the mass), for R rows of one kind of sampling parameters each: greedy, temperature 1,
temperature 0.7, top-k 50, top-p 0.9, min-p 0.05, and three filters together (temperature 0.7,
top-p 0.8, top-k 20); with ``--history L`` also penalties (repetition 1.1 and presence 0.5, on rows
whose sequences hold L random tokens, half of them output, and grow by a token each call, as in
decode). Microseconds per call, the best of ``--repeats`` timings (one thread, the C argmax as a
CPU engine has it). With ``--base REV`` the sampler module of that git revision is
timed beside this checkout's, alternating, with the ratio ``base / this`` (above 1: this is faster).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from shared.engine import sampler as this_sampler
from shared.engine.request import SamplingParams

REPO = Path(__file__).resolve().parent.parent
KINDS: dict[str, dict[str, Any]] = {
    "greedy": dict(temperature=0.0),
    "T=1": {},
    "T=0.7": dict(temperature=0.7),
    "top-k 50": dict(top_k=50),
    "top-p 0.9": dict(top_p=0.9),
    "min-p 0.05": dict(min_p=0.05),
    "T=0.7 top-p 0.8 top-k 20": dict(temperature=0.7, top_p=0.8, top_k=20),
}


def base_module(rev: str, tmp: Path) -> Any:
    """The sampler module of git revision ``rev``, imported from a copy of its source."""
    path = tmp / "base_sampler.py"
    path.write_text(
        subprocess.check_output(["git", "show", f"{rev}:shared/engine/sampler.py"], cwd=REPO, text=True)
    )
    spec = importlib.util.spec_from_file_location("base_sampler", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["base_sampler"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def peaked(rows: int, vocab: int) -> torch.Tensor:
    """[rows, vocab] logits whose probabilities fall as rank^-1.5, each row in its own order."""
    g = torch.Generator().manual_seed(rows)
    by_rank = -1.5 * torch.arange(1, vocab + 1, dtype=torch.float32).log()
    return torch.stack([by_rank[torch.randperm(vocab, generator=g)] for _ in range(rows)])


PENALTIES = dict(repetition_penalty=1.1, presence_penalty=0.5)


def histories(module: Any, rows: int, vocab: int, length: int) -> Any:
    """A function that appends a token to each row's sequence and returns what ``module``'s sampler
    takes as their histories (a revision before ``shared.engine.penalties`` took (tokens, prompt
    length) pairs)."""
    g = torch.Generator().manual_seed(length)
    seqs = [torch.randint(vocab, (length,), generator=g).tolist() for _ in range(rows)]
    if not hasattr(module, "TokenHistory"):
        return lambda: [s.append(7) or (s, length // 2) for s in seqs]
    kept = [module.TokenHistory(s, length // 2, torch.device("cpu")) for s in seqs]
    return lambda: [s.append(7) or h.sync() for s, h in zip(seqs, kept, strict=True)]


def time_call(
    sampler: Any, logits: torch.Tensor, params: list[SamplingParams], calls: int, history: Any = None
) -> float:
    rows = len(params)
    start = time.perf_counter()
    for _ in range(calls):
        sampler(logits, params, [None] * rows, [0] * rows, history() if history else None)
    return (time.perf_counter() - start) / calls * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", help="git revision whose sampler is timed beside this one")
    p.add_argument("--vocab", type=int, nargs="+", default=[576, 151936])
    p.add_argument("--rows", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--history", type=int, nargs="*", default=[], help="penalty rows with these history lengths"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        modules = {"this": this_sampler}
        if args.base:
            modules = {"base": base_module(args.base, Path(tmp)), **modules}
        samplers = {name: m.Sampler(0, torch.device("cpu"), c_argmax=True) for name, m in modules.items()}
        print(
            "| vocab | rows | params | "
            + " | ".join(f"{n} (us)" for n in samplers)
            + (" | base / this |" if args.base else " |")
        )
        print("| ---: | ---: | --- |" + " ---: |" * (len(samplers) + bool(args.base)))
        for vocab in args.vocab:
            calls = max(3, 300 * 576 // vocab)
            for rows in args.rows:
                logits = peaked(rows, vocab)
                kinds = [(kind, fields, 0) for kind, fields in KINDS.items()]
                kinds += [(f"penalties, {n} tokens", PENALTIES, n) for n in args.history]
                for kind, fields, length in kinds:
                    params = [SamplingParams(**fields) for _ in range(rows)]
                    best = {n: float("inf") for n in samplers}
                    hist = {
                        n: histories(modules[n], rows, vocab, length) if length else None for n in samplers
                    }
                    for n, s in samplers.items():
                        time_call(s, logits, params, 2, hist[n])  # warm-up
                    for _ in range(args.repeats):
                        for n, s in samplers.items():
                            best[n] = min(best[n], time_call(s, logits, params, calls, hist[n]))
                    cells = " | ".join(f"{best[n]:.0f}" for n in samplers)
                    ratio = f" | {best['base'] / best['this']:.1f}x |" if args.base else " |"
                    print(f"| {vocab} | {rows} | {kind} | {cells}{ratio}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
