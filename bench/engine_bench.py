"""Prefill and decode throughput of the engine against transformers' ``generate``, same run, same model.

    python bench/engine_bench.py [--demo CKPT] [--threads 1] [--batches 1 8 32] [--prompt-len 128]

Checkpoints: the demo checkpoint (``--demo``; by default the default tiny checkpoint of
``shared.checkpoint.tiny``) and a larger random one (hidden 512, 8 layers, 32 experts).

Equal batches: for each batch size B both systems get the same B random text prompts of the same
length (so transformers wastes nothing on padding) and are timed generating 1 token (prefill) and
1 + N tokens, greedy or (``--temperature``) both sampling at that temperature without filters.
Prefill tokens/s = B * prompt_len / t(1); decode tokens/s = B * N / (t(1+N) - t(1)).
The two systems' runs alternate and each figure is the best of ``--repeats``, so that load from
other processes hits both alike. EOS is ignored on both sides.

Mixed load: 32 requests with prompts of 16 to 512 tokens and 8 to 64 new tokens each, served as
each system can: transformers as one left-padded batch until the longest is done, the engine
batching continuously. Figures: wall time for all 32 and useful (requested) tokens per second.

Prints Markdown tables (the figures of docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.checkpoint.tiny import make_tiny_checkpoint  # noqa: E402
from shared.engine import Engine, EngineConfig, Request, SamplingParams  # noqa: E402
from shared.models.loader import load_model  # noqa: E402

LARGE = dict(
    hidden_size=512,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=64,
    intermediate_size=1024,
    num_experts=32,
    num_experts_per_tok=4,
    moe_intermediate_size=192,
)
_ids = itertools.count()


def load_both(ckpt: Path):
    from transformers import Qwen3VLMoeForConditionalGeneration

    hf = Qwen3VLMoeForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None  # run every sequence to its length
    return hf, load_model(ckpt, parts={"language"}, dtype="float32")


def text_vocab(lm) -> int:
    """Token ids below every special token of the checkpoint (random text for the prompts)."""
    cfg = lm.config
    specials = (cfg.image_token_id, cfg.video_token_id, cfg.vision_start_token_id, *cfg.eos_token_ids)
    return min(1000, *specials)


def hf_generate(hf, ids: torch.Tensor, mask: torch.Tensor, new_tokens: int, temperature: float = 0.0) -> None:
    """Greedy, or sampled at ``temperature`` without filters (EOS held back: every row runs to the end)."""
    sampling = (
        dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0, min_new_tokens=new_tokens)
        if temperature
        else dict(do_sample=False)
    )
    with torch.inference_mode():
        out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, **sampling)
    assert out.shape[1] == ids.shape[1] + new_tokens


def engine_generate(
    engine: Engine, rows: list[list[int]], new_tokens: list[int], temperature: float = 0.0
) -> None:
    reqs = [
        Request(f"r{next(_ids)}", row, SamplingParams(temperature=temperature, max_tokens=n, ignore_eos=True))
        for row, n in zip(rows, new_tokens, strict=True)
    ]
    out = engine.generate(reqs)
    assert [len(out[r.request_id]) for r in reqs] == new_tokens


def best_alternating(runs: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    for run in runs.values():
        run()  # warm up
    times = {name: float("inf") for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            t = time.perf_counter()
            run()
            times[name] = min(times[name], time.perf_counter() - t)
    return times


def equal_batches(name: str, ckpt: Path, args) -> None:
    hf, lm = load_both(ckpt)
    for b in args.batches:
        hp, ep, hd, ed, cd = one_batch(
            hf, lm, b, args.prompt_len, args.decode, args.repeats, args.compiled, args.temperature
        )
        compiled = f" {cd:,.0f} | {cd / hd:.2f}x |" if args.compiled else ""
        print(
            f"| {name} | {b} | {ep:,.0f} | {hp:,.0f} | {ep / hp:.2f}x | {ed:,.0f} | {hd:,.0f} | {ed / hd:.2f}x |"
            + compiled
        )


def one_batch(
    hf, lm, b: int, p: int, n: int, repeats: int, compiled: bool, temperature: float = 0.0
) -> tuple[float, float, float, float, float]:
    """Prefill and decode tokens/s: (hf prefill, engine prefill, hf decode, engine decode, compiled
    engine decode or 0). The compiled engine's graph is compiled before timing (``warmup``)."""
    ids = torch.randint(0, text_vocab(lm), (b, p), generator=torch.Generator().manual_seed(b))  # [B, P]
    mask = torch.ones_like(ids)
    rows = ids.tolist()
    config = EngineConfig(
        block_size=16,
        num_blocks=b * -(-(p + n + 1) // 16) + 8,
        max_num_seqs=b,
        max_num_batched_tokens=max(4096, b),
        prefill_chunk_size=p,
        enable_prefix_cache=False,  # the same prompts run again and again
    )
    engine = Engine(lm, config)
    runs = {
        "hf1": lambda: hf_generate(hf, ids, mask, 1, temperature),
        "eng1": lambda: engine_generate(engine, rows, [1] * b, temperature),
        "hfn": lambda: hf_generate(hf, ids, mask, 1 + n, temperature),
        "engn": lambda: engine_generate(engine, rows, [1 + n] * b, temperature),
    }
    if compiled:
        fast = Engine(lm, dataclasses.replace(config, compile_decode=True))
        graph = fast.runner.graph
        assert graph is not None
        if not graph.ready:
            raise SystemExit(f"--compiled: the decode graph did not compile: {graph.error}")
        print(f"<!-- batch {b}: decode graph compiled in {graph.warmup_seconds:.1f} s -->")
        runs["cmp1"] = lambda: engine_generate(fast, rows, [1] * b, temperature)
        runs["cmpn"] = lambda: engine_generate(fast, rows, [1 + n] * b, temperature)
    t = best_alternating(runs, repeats)
    decode = {k: b * n / (t[f"{k}n"] - t[f"{k}1"]) for k in ("hf", "eng", "cmp") if f"{k}1" in t}
    return b * p / t["hf1"], b * p / t["eng1"], decode["hf"], decode["eng"], decode.get("cmp", 0.0)


def mixed_load(name: str, ckpt: Path, args) -> None:
    hf, lm = load_both(ckpt)
    g = torch.Generator().manual_seed(7)
    lengths = torch.randint(16, 513, (32,), generator=g).tolist()
    new_tokens = torch.randint(8, 65, (32,), generator=g).tolist()
    rows = [torch.randint(0, text_vocab(lm), (m,), generator=g).tolist() for m in lengths]
    width = max(lengths)
    ids = torch.full((32, width), hf.generation_config.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros(32, width, dtype=torch.long)
    for i, row in enumerate(rows):  # left padding
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    engine = Engine(
        lm, EngineConfig(block_size=16, num_blocks=32 * 40, max_num_seqs=32, enable_prefix_cache=False)
    )
    t = best_alternating(
        {
            "hf": lambda: hf_generate(hf, ids, mask, max(new_tokens), args.temperature),
            "eng": lambda: engine_generate(engine, rows, new_tokens, args.temperature),
        },
        args.repeats,
    )
    useful = sum(new_tokens)
    print(
        f"| {name} | {t['eng']:.2f} s | {t['hf']:.2f} s | {t['hf'] / t['eng']:.2f}x "
        f"| {useful / t['eng']:,.0f} | {useful / t['hf']:,.0f} |"
    )


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return "unknown CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--demo", type=Path, default=None, help="demo checkpoint (default: the default tiny one)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--decode", type=int, default=32, help="tokens timed after the first")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-large", action="store_true")
    p.add_argument("--skip-mixed", action="store_true")
    p.add_argument("--compiled", action="store_true", help="also time the engine with --compile-decode")
    p.add_argument(
        "--temperature", type=float, default=0.0, help="0: greedy; else both sides sample at it, unfiltered"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{cpu_name()}, torch {torch.__version__}, {args.threads} thread(s), float32")
    how = f"sampled at temperature {args.temperature}" if args.temperature else "greedy"
    print(
        f"prompt {args.prompt_len} tokens, decode {args.decode} tokens after the first ({how}), "
        f"best of {args.repeats}\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        demo_name = "demo" if args.demo else "demo (default tiny)"
        ckpts = {demo_name: args.demo or make_tiny_checkpoint(Path(tmp) / "demo")}
        if not args.skip_large:
            ckpts["large random"] = make_tiny_checkpoint(Path(tmp) / "large", **LARGE)
        extra = " compiled decode tok/s | ratio |" if args.compiled else ""
        print("| checkpoint | batch | engine prefill tok/s | HF prefill tok/s | ratio "
              "| engine decode tok/s | HF decode tok/s | ratio |" + extra)  # fmt: skip
        print("|---|---|---|---|---|---|---|---|" + ("---|---|" if args.compiled else ""))
        for name, ckpt in ckpts.items():
            equal_batches(name, ckpt, args)
        if not args.skip_mixed:
            print("\n| checkpoint | engine time | HF time | ratio | engine useful tok/s | HF useful tok/s |")
            print("|---|---|---|---|---|---|")
            for name, ckpt in ckpts.items():
                mixed_load(name, ckpt, args)


if __name__ == "__main__":
    main()
