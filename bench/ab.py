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


def server(checkout: Path, args: argparse.Namespace, log_dir: Path) -> Server:
    cmd = (
        sys.executable, "-m", "router.cli", "up", "--model", str(args.model), "--dtype", args.dtype,
        "--torch-threads", "1", "--base-port", "0", "--port", "0", "--log-dir", str(log_dir),
        *args.cluster_flag,
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(checkout)}  # the checkout's packages before the venv's
    return Server(checkout.name, cmd, "cluster ready", 330, cwd=checkout, env=env)


def measure(checkout: Path, args: argparse.Namespace, log_dir: Path) -> float:
    with serve(server(checkout, args, log_dir), log_dir) as url:
        load = LoadConfig(
            base_url=url, num_requests=args.num_requests, concurrency=args.concurrency, seed=0,
            images=args.images, image_size=args.image_size, max_tokens=args.max_tokens, ignore_eos=True,
            warmup=args.warmup, progress=False,
        )  # fmt: skip
        report = run(load)["runs"][0]
    if report["completed"] != args.num_requests:
        raise RuntimeError(f"{checkout}: {report['completed']} of {args.num_requests} requests completed")
    return float(report["request_throughput"])


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
    p.add_argument("--max-tokens", default="32")
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--cluster-flag", action="append", default=[], help="extra flag for epd up (repeatable)")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="ab-"))
    base = tmp / "base"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(base), args.base], check=True)
    rps: dict[str, list[float]] = {"base": [], "candidate": []}
    try:
        for r in range(args.rounds):
            order = ("base", "candidate") if r % 2 == 0 else ("candidate", "base")
            for name in order:
                checkout = base if name == "base" else REPO
                rps[name].append(measure(checkout, args, tmp / f"{name}-{r}"))
                print(f"round {r + 1} {name:9s} {rps[name][-1]:.3f} req/s", flush=True)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)], check=False)
    med = {k: statistics.median(v) for k, v in rps.items()}
    print(f"base {args.base}: median {med['base']:.3f} req/s  {[round(x, 3) for x in rps['base']]}")
    print(
        f"candidate (this checkout): median {med['candidate']:.3f} req/s  {[round(x, 3) for x in rps['candidate']]}"
    )
    print(f"candidate / base: {med['candidate'] / med['base']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
