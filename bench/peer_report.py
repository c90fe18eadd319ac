"""``python -m bench.peer_report OUT``: the table of a ``bench/peer_vllm.sh`` sitting.

Reads ``OUT/<server>-<shape>-r<round>.txt`` (``vllm bench serve``'s output, the client's CPU from
``/usr/bin/time`` and the servers' from ``bench.tree_cpu``) and prints, per load, each server's
requests/s in every round, and the medians over rounds of requests/s, TTFT p50 and p99, TPOT p50
and server CPU per request; then each server's ratios to the first one (vLLM).
"""

from __future__ import annotations

import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

FIELDS = {
    "req/s": r"Request throughput \(req/s\):\s+([\d.]+)",
    "TTFT p50": r"Median TTFT \(ms\):\s+([\d.]+)",
    "TTFT p99": r"P99 TTFT \(ms\):\s+([\d.]+)",
    "TPOT p50": r"Median TPOT \(ms\):\s+([\d.]+)",
    "server CPU ms/req": r"server cpu\s+([\d.]+) ms/request\s+total",
}
ORDER = ("vllm", "base", "cluster", "paced", "colocated")
SHAPES = {"1img": "1 image 224px, concurrency 8", "3img": "3 images 448px, concurrency 4"}


def parse(text: str) -> dict[str, float]:
    out = {}
    for key, pattern in FIELDS.items():
        if m := re.search(pattern, text):
            out[key] = float(m.group(1))
    return out


def collect(out_dir: Path) -> dict[tuple[str, str], list[dict[str, float]]]:
    runs: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    for path in sorted(out_dir.glob("*-r*.txt")):
        m = re.fullmatch(r"(\w+)-(\dimg)-r(\d+)\.txt", path.name)
        if m:
            runs[(m.group(1), m.group(2))].append(parse(path.read_text()))
    return runs


def table(runs: dict[tuple[str, str], list[dict[str, float]]]) -> list[str]:
    lines = []
    for shape, title in SHAPES.items():
        servers = [s for s in ORDER if (s, shape) in runs] + sorted(
            {s for s, sh in runs if sh == shape} - set(ORDER)
        )
        if not servers:
            continue
        lines += [f"{title}:", "", "| server | req/s per round | " + " | ".join(FIELDS) + " |",
                  "| --- | --- |" + " ---: |" * len(FIELDS)]  # fmt: skip
        med: dict[str, dict[str, float]] = {}
        for s in servers:
            rs = runs[(s, shape)]
            med[s] = {
                k: statistics.median(r[k] for r in rs if k in r) for k in FIELDS if any(k in r for r in rs)
            }
            rounds = ", ".join(f"{r['req/s']:.2f}" for r in rs if "req/s" in r)
            cells = " | ".join(f"{med[s][k]:.2f}" if k in med[s] else "-" for k in FIELDS)
            lines.append(f"| {s} | {rounds} | {cells} |")
        base = servers[0]
        for s in servers[1:]:
            ratios = ", ".join(
                f"{k} {med[s][k] / med[base][k]:.2f}x" for k in FIELDS if k in med[s] and med[base].get(k)
            )
            lines.append(f"\n{s} / {base} (medians): {ratios}")
        lines.append("")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) != 1:
        print(__doc__.splitlines()[0], file=sys.stderr)
        return 2
    print("\n".join(table(collect(Path(args[0])))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
