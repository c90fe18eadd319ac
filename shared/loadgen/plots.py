"""PNG plots of a report (matplotlib, Agg backend): latency CDFs, and a sweep's curves.

latency_cdf.png  TTFT, TPOT and E2E CDFs, one curve per run
sweep.png        (two runs or more) throughput and p50/p99 TTFT, TPOT, E2E against the swept
                 request rate or concurrency; an infinite rate sits at the right end

matplotlib is the ``loadgen`` extra: this module is imported only when plots are asked for
(``--plots``), and without matplotlib it raises ``shared.extras.MissingExtra`` naming the extra.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from shared.extras import require

FEATURE = "epd loadgen --plots"
require("matplotlib", extra="loadgen", feature=FEATURE).use("Agg")
plt = require("matplotlib.pyplot", extra="loadgen", feature=FEATURE)

_METRICS = (("ttft", "TTFT"), ("tpot", "TPOT"), ("e2e", "E2E latency"))


def _values_ms(entry: dict, metric: str) -> np.ndarray:
    vals = [r[f"{metric}_s"] for r in entry["records"] if r["success"] and r[f"{metric}_s"] is not None]
    return np.sort(np.asarray(vals, dtype=float) * 1000)


def latency_cdfs(report: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, len(_METRICS), figsize=(5 * len(_METRICS), 4))
    for ax, (metric, title) in zip(axes, _METRICS, strict=True):
        for entry in report["runs"]:
            ms = _values_ms(entry, metric)
            if len(ms):
                ax.step(ms, np.arange(1, len(ms) + 1) / len(ms), where="post", label=entry["label"])
        ax.set(title=title, xlabel="ms", ylabel="fraction of requests", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.suptitle(f"{report['model']}: latency CDFs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _x_positions(runs: list[dict]) -> tuple[list[float], list[str], str]:
    """x values and tick labels; an infinite rate is drawn one step past the largest finite one."""
    mode = runs[0]["mode"]
    raw = [r["concurrency"] if mode == "concurrency" else r["request_rate"] for r in runs]
    levels = [math.inf if v == "inf" else float(v) for v in raw]
    finite = [v for v in levels if not math.isinf(v)]
    top = max(finite, default=0.0)
    step = (top - min(finite)) / max(len(finite) - 1, 1) if len(finite) > 1 else max(top, 1.0)
    xs = [top + step if math.isinf(v) else v for v in levels]
    name = "concurrency" if mode == "concurrency" else "request rate (req/s)"
    return xs, [f"{v:g}" for v in levels], name


def sweep(report: dict, path: Path) -> None:
    runs = report["runs"]
    xs, ticks, xlabel = _x_positions(runs)
    fig, axes = plt.subplots(1, 1 + len(_METRICS), figsize=(5 * (1 + len(_METRICS)), 4))
    ax = axes[0]
    ax.plot(xs, [r["request_throughput"] for r in runs], "o-", label="requests/s")
    ax2 = ax.twinx()
    ax2.plot(
        xs, [r["output_token_throughput"] for r in runs], "s--", color="tab:orange", label="output tok/s"
    )
    ax.set(title="throughput", xlabel=xlabel, ylabel="requests/s")
    ax2.set_ylabel("output tokens/s")
    ax.legend(loc="upper left", fontsize="small")
    ax2.legend(loc="lower right", fontsize="small")
    for ax, (metric, title) in zip(axes[1:], _METRICS, strict=True):
        for pct, style in (("p50", "o-"), ("p99", "s--")):
            ys = [r[f"{metric}_ms"][pct] for r in runs]
            ax.plot(xs, [np.nan if y is None else y for y in ys], style, label=pct)
        ax.set(title=f"{title} (ms)", xlabel=xlabel, ylabel="ms")
        ax.legend(fontsize="small")
    for ax in axes:
        ax.set_xticks(xs, ticks)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{report['model']}: sweep")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(report: dict, directory: str | Path) -> list[str]:
    """Write the plots into ``directory`` (created if missing); returns their paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "latency_cdf.png"]
    latency_cdfs(report, paths[0])
    if len(report["runs"]) > 1:
        paths.append(out / "sweep.png")
        sweep(report, paths[1])
    return [str(p) for p in paths]
