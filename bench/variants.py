"""``python -m bench.variants``: cluster flag variants up together, the same load alternated.

    python -m bench.variants --variant= --variant=--decode-arg=--step-interval-ms=2 \\
        --rounds 3 --num-requests 512 --concurrency 8 --images 1 --image-format jpeg --warmup 16

Every ``--variant`` (a string of extra ``epd up`` flags; empty: the defaults) gets its own cluster,
all started first and kept up, idle but for the one under load: a machine whose speed drifts
within the sitting then drifts under all of them (``bench.ab`` compares two commits instead,
starting each run afresh). Each round runs the closed-loop load (``bench.compare``'s flags) once
on every variant, in an order that rotates by one each round, each run with its own seed (no
cache sees a prompt or an image twice). Per run and as medians over the rounds: requests/s, TTFT
and TPOT p50, tokens per decode step (decode workers' metrics) and the server's CPU per request
(every process, from ``/proc``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import statistics
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from bench.compare import CompareConfig, parse_args
from bench.profile_setups import cpu_seconds, engine_counters, server_processes, step_figures
from bench.servers import serve
from shared.loadgen import run

FIGURES = ("req/s", "TTFT p50", "TPOT p50", "tokens/step", "CPU ms/req")


def rotation(n: int, round_index: int) -> list[int]:
    """The order of ``n`` variants in a round: 0..n-1 shifted left by the round's index."""
    k = round_index % n if n else 0
    return [*range(k, n), *range(k)]


def figures(report: dict, steps: dict, cpu_ms: dict[str, float]) -> dict[str, float | None]:
    run_ = report["runs"][0]
    per_step = [s["tokens_per_step"] for s in steps.values()]
    return {
        "req/s": round(run_["request_throughput"], 2),
        "TTFT p50": round(run_["ttft_ms"]["p50"], 1),
        "TPOT p50": round(run_["tpot_ms"]["p50"], 2),
        "tokens/step": round(statistics.mean(per_step), 2) if per_step else None,
        "CPU ms/req": round(sum(cpu_ms.values()), 1),
    }


def medians(rows: list[dict[str, float | None]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in FIGURES:
        values = [v for r in rows if (v := r.get(key)) is not None]
        out[key] = round(statistics.median(values), 2) if values else None
    return out


def measure(cfg: CompareConfig, url: str, log_dir: Path, seed: int) -> tuple[dict, dict[str, float]]:
    procs = {pid: role for pid, role in server_processes(str(log_dir)).items() if role != "supervisor"}
    before, cpu0 = engine_counters(log_dir, list(procs.values())), {p: cpu_seconds(p) for p in procs}
    report = run(replace(cfg, seed=seed).load(url, concurrency=cfg.concurrency, warmup=0))
    cpu_ms = {r: 1000 * (cpu_seconds(p) - cpu0[p]) / cfg.num_requests for p, r in procs.items()}
    steps = step_figures(before, engine_counters(log_dir, list(procs.values())))
    return figures(report, steps, cpu_ms), {r: round(v, 2) for r, v in cpu_ms.items()}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.variants",
        description=__doc__.split("\n")[0].split(": ", 1)[1],
        epilog="every other flag is bench.compare's (model, workload, --cluster-flags, ...)",
    )
    p.add_argument("--variant", action="append", default=[], help="extra epd up flags (repeatable)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, help="write the runs and medians here (JSON)")
    p.add_argument("--log-root", type=Path, default=Path("variants-logs"), help="each cluster's logs")
    a, rest = p.parse_known_args(argv)
    cfg = replace(parse_args(["--setups", "cluster", *rest]), progress=False)
    variants = [shlex.split(v) for v in a.variant] or [[]]
    names = [" ".join(v) or "(defaults)" for v in variants]
    rows: list[list[dict]] = [[] for _ in variants]
    with contextlib.ExitStack() as stack:
        urls, dirs = [], []
        for i, flags in enumerate(variants):
            d = a.log_root.resolve() / f"v{i}"
            c = replace(cfg, cluster_flags=(*cfg.cluster_flags, *flags))
            urls.append(stack.enter_context(serve(c.server("cluster", d), d)))
            dirs.append(d)
        for url in urls:  # warm every variant before any is measured
            run(
                replace(cfg, num_requests=max(cfg.warmup, 1)).load(url, concurrency=cfg.concurrency, warmup=0)
            )
        for r in range(a.rounds):
            for i in rotation(len(variants), r):
                got, cpu_ms = measure(cfg, urls[i], dirs[i], cfg.seed + 1000 * (r + 1) + i)
                rows[i].append(got)
                print(
                    f"round {r + 1} {names[i]}: {json.dumps(got)}  CPU ms/req {json.dumps(cpu_ms)}",
                    flush=True,
                )
    summary = {name: medians(rs) for name, rs in zip(names, rows, strict=True)}
    print(f"medians over {a.rounds} rounds:")
    print("| variant | " + " | ".join(FIGURES) + " |")
    print("| --- |" + " ---: |" * len(FIGURES))
    for name, med in summary.items():
        print(f"| {name} | " + " | ".join("-" if med[k] is None else str(med[k]) for k in FIGURES) + " |")
    if a.out:
        a.out.write_text(
            json.dumps({"runs": dict(zip(names, rows, strict=True)), "medians": summary}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
