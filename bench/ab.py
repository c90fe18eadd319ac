"""``python -m bench.ab --base REF``: the same cluster load against two versions of the code,
alternated in one sitting, with the median ratio of their throughputs.

    python -m bench.ab --base HEAD~1 --rounds 3 --num-requests 48 --concurrency 8 --images 1

The base version is a ``git worktree`` of ``REF`` (under a temporary directory, removed after); the
candidate is this checkout. Each round starts ``epd up`` from one checkout, runs the closed-loop
load (``shared.loadgen``, the same seed: identical prompts and images), stops it, then does the
same from the other; the order alternates between rounds (base first in odd rounds) so that a
machine whose speed drifts during the sitting favours neither. The load generator and the venv are
this checkout's; only the servers' code differs. Prints each run's requests/s and the medians,
and ``candidate / base`` (above 1: the candidate serves more).

Throughput on a shared machine drifts by several percent from run to run; the CPU time each
process of the cluster spent per request (user + system, read from ``/proc`` before and after the
load, warm-up included) is printed too: on a CPU-bound box it is what throughput is made of, and
it moves far less, so a per-request cost of the candidate shows there first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.servers import Server, serve
from shared.assets import DEMO_MODEL_DIR
from shared.loadgen import LoadConfig, run

REPO = Path(__file__).resolve().parent.parent


def server(checkout: Path, args: argparse.Namespace, log_dir: Path, extra: Sequence[str] = ()) -> Server:
    cmd = (
        sys.executable, "-m", "router.cli", "up", "--model", str(args.model), "--dtype", args.dtype,
        "--torch-threads", "1", "--base-port", "0", "--port", "0", "--log-dir", str(log_dir),
        *args.cluster_flag, *extra,
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(checkout)}  # the checkout's packages before the venv's
    return Server(checkout.name, cmd, "cluster ready", 330, cwd=checkout, env=env)


def cpu_seconds(session: int) -> dict[str, float]:
    """User + system CPU seconds of each live process of ``session``, summed by the module it runs
    (``python -m MODULE``: ``router.cli``, ``services.prefill``, ...)."""
    tick = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # exited meanwhile
            continue
        if int(fields[3]) != session or "-m" not in argv:  # fields[3]: session id; [11], [12]: utime, stime
            continue
        module = argv[argv.index("-m") + 1]
        used[module] = used.get(module, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return used


def measure(
    checkout: Path, args: argparse.Namespace, log_dir: Path, extra: Sequence[str] = ()
) -> tuple[float, dict[str, float], dict[str, float]]:
    """Requests/s of one run, each module's CPU milliseconds per request, and TTFT and TPOT p50 (ms)."""
    procs: list[subprocess.Popen] = []
    with serve(server(checkout, args, log_dir, extra), log_dir, procs.append) as url:
        before = cpu_seconds(procs[0].pid)
        load = LoadConfig(
            base_url=url, num_requests=args.num_requests, concurrency=args.concurrency, seed=0,
            images=args.images, image_size=args.image_size, image_format=args.image_format,
            prompt_words=args.prompt_words, max_tokens=args.max_tokens, ignore_eos=True, warmup=args.warmup,
            temperature=args.temperature,
            progress=False,
        )  # fmt: skip
        report = run(load)["runs"][0]
        after = cpu_seconds(procs[0].pid)
    if report["completed"] != args.num_requests:
        raise RuntimeError(f"{checkout}: {report['completed']} of {args.num_requests} requests completed")
    sent = args.num_requests + args.warmup
    cpu = {m: 1000 * (t - before.get(m, 0.0)) / sent for m, t in after.items()}
    cpu["all"] = sum(cpu.values())
    latency = {"TTFT p50": report["ttft_ms"]["p50"], "TPOT p50": report["tpot_ms"]["p50"]}
    return float(report["request_throughput"]), cpu, latency


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="git revision to compare this checkout with")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--model", type=Path, default=DEMO_MODEL_DIR)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--num-requests", type=int, default=48)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--images", default="1")
    p.add_argument("--image-size", default="224x224")
    p.add_argument("--image-format", choices=("png", "jpeg"), default="png")
    p.add_argument("--prompt-words", default=LoadConfig.prompt_words)
    p.add_argument("--max-tokens", default="32")
    p.add_argument(
        "--temperature", type=float, default=0.0, help="0: greedy; vllm bench serve's loads sample at 1"
    )
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--cluster-flag", action="append", default=[], help="extra flag for epd up (repeatable)")
    p.add_argument(
        "--candidate-flag", action="append", default=[],
        help="extra flag for the candidate's epd up only (repeatable): with --base HEAD, an A/B of a flag",
    )  # fmt: skip
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="ab-"))
    base = tmp / "base"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(base), args.base], check=True)
    rps: dict[str, list[float]] = {"base": [], "candidate": []}
    cpu: dict[str, list[dict[str, float]]] = {"base": [], "candidate": []}
    lat: dict[str, list[dict[str, float]]] = {"base": [], "candidate": []}
    try:
        for r in range(args.rounds):
            order = ("base", "candidate") if r % 2 == 0 else ("candidate", "base")
            for name in order:
                checkout = base if name == "base" else REPO
                extra = args.candidate_flag if name == "candidate" else ()
                throughput, used, latency = measure(checkout, args, tmp / f"{name}-{r}", extra)
                rps[name].append(throughput)
                cpu[name].append(used)
                lat[name].append(latency)
                per = "  ".join(f"{m} {ms:.1f}" for m, ms in sorted(used.items()))
                times = "  ".join(f"{k} {ms:.1f} ms" for k, ms in latency.items())
                print(
                    f"round {r + 1} {name:9s} {throughput:.3f} req/s  {times}  CPU ms/request: {per}",
                    flush=True,
                )
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)], check=False)
    med = {k: statistics.median(v) for k, v in rps.items()}
    print(f"base {args.base}: median {med['base']:.3f} req/s  {[round(x, 3) for x in rps['base']]}")
    print(
        f"candidate (this checkout): median {med['candidate']:.3f} req/s  {[round(x, 3) for x in rps['candidate']]}"
    )
    print(f"candidate / base: {med['candidate'] / med['base']:.3f}")
    for key in ("TTFT p50", "TPOT p50"):
        b, c = (statistics.median(run[key] for run in lat[k]) for k in ("base", "candidate"))
        print(f"{key}, median of the runs: base {b:.1f} ms -> candidate {c:.1f} ms  x{c / b:.3f}")
    print("CPU ms per request, median of the runs (base -> candidate, ratio):")
    for module in sorted({m for runs in cpu.values() for used in runs for m in used}):
        b, c = (statistics.median(used.get(module, 0.0) for used in cpu[k]) for k in ("base", "candidate"))
        print(f"  {module:18s} {b:7.1f} -> {c:7.1f}  x{c / b if b else float('nan'):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
