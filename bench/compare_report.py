"""How a ``bench.compare`` result reads: the text tables and the PNG plots.

Tables: one row per setup (closed loop), the ratios between setups, the stage breakdown (one row
per stage of the answers' ``timeline``, p50 and p99 per setup side by side, "-" where a setup did
not report the stage; only when some setup's server sends timelines), one row per setup and rate
(sweep). Plots (``write_plots``): latency_cdf.png (TTFT, TPOT, E2E CDFs, one curve per setup),
sweep_<setup>.png (``shared.loadgen.plots.sweep`` per swept setup) and, for two swept setups or
more, sweep_compare.png (throughput and p50/p99 latencies against the request rate, per setup).
"""

from __future__ import annotations

from pathlib import Path

COLUMNS = (
    ("req/s", "request_throughput", None, ".2f"),
    ("out tok/s", "output_token_throughput", None, ".1f"),
    ("TTFT p50", "ttft_ms", "p50", ".0f"),
    ("TTFT p99", "ttft_ms", "p99", ".0f"),
    ("TPOT p50", "tpot_ms", "p50", ".1f"),
    ("TPOT p99", "tpot_ms", "p99", ".1f"),
    ("E2E p50", "e2e_ms", "p50", ".0f"),
    ("E2E p99", "e2e_ms", "p99", ".0f"),
)
RATIO_COLUMNS = (
    ("req/s", "request_throughput"),
    ("out tok/s", "output_token_throughput"),
    ("TTFT p50", "ttft_p50"),
    ("TPOT p50", "tpot_p50"),
    ("E2E p50", "e2e_p50"),
)


def _grid(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return [
        "  ".join(
            cell.ljust(w) if c == 0 else cell.rjust(w)
            for c, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]


def _cells(run: dict) -> list[str]:
    cells = []
    for _, key, stat, fmt in COLUMNS:
        value = run[key] if stat is None else run[key][stat]
        cells.append("-" if value is None else format(value, fmt))
    return [*cells, str(run["failed"])]


def _header(result: dict) -> str:
    c = result["config"]
    eos = ", ignore_eos" if c["ignore_eos"] else ""
    model = next((r["model"] for r in result["setups"].values()), Path(c["model"]).name)
    return (
        f"model {model}: {c['num_requests']} requests per setup, closed loop at concurrency "
        f"{c['concurrency']}, images {c['images']} of {c['image_size']}, max_tokens {c['max_tokens']}{eos}; "
        f"{c['dtype']}, {c['torch_threads']} torch thread(s) per server process; latencies in ms"
    )


def render(result: dict) -> str:
    """The setups table, the ratios and the sweep, as printed by ``python -m bench.compare``."""
    lines = [_header(result)]
    titles = [name for name, *_ in COLUMNS]
    setups = result["setups"]
    if setups:
        rows = [["setup", *titles, "failed"]]
        rows += [[name, *_cells(report["runs"][0])] for name, report in setups.items()]
        lines += _grid(rows)
    if result["ratios"]:
        lines += ["", "ratios A/B (throughput: above 1 A is better; latency medians: below 1 A is faster)"]
        rows = [["A/B", *(title for title, _ in RATIO_COLUMNS)]]
        for pair, values in result["ratios"].items():
            rows.append(
                [pair, *("-" if values[k] is None else f"{values[k]:.2f}x" for _, k in RATIO_COLUMNS)]
            )
        lines += _grid(rows)
    if result.get("stages"):
        lines += ["", *_stages(result)]
    if result["sweep"]:
        lines += ["", "Poisson sweep"]
        rows = [["setup", "rate", *titles, "failed"]]
        for name, report in result["sweep"].items():
            rows += [[name, _rate(run), *_cells(run)] for run in report["runs"]]
        lines += _grid(rows)
    for name, error in result["errors"].items():
        lines.append(f"{name}: FAILED: {error}")
    return "\n".join(lines)


def _stages(result: dict) -> list[str]:
    """The stage breakdown: per stage, p50 and p99 of each setup that sent timelines."""
    breakdown = result["stages"]
    names = list(next(iter(breakdown.values())))
    lines = ["stages (closed loop, p50 / p99 over the requests that crossed the stage)"]
    rows = [["stage", *(f"{name} {pct}" for name in names for pct in ("p50", "p99"))]]
    for stage, per_setup in breakdown.items():
        cells = [
            "-" if (s := per_setup[name]) is None or s[pct] is None else format(s[pct], ".1f")
            for name in names
            for pct in ("p50", "p99")
        ]
        rows.append([stage, *cells])
    lines += _grid(rows)
    counts = [
        f"{name} {run.get('timelines', 0)}/{run['completed']}"
        for name, report in result["setups"].items()
        for run in report["runs"][:1]
    ]
    lines.append("answers with a timeline: " + ", ".join(counts))
    return lines


def _rate(run: dict) -> str:
    rate = run["request_rate"]
    return rate if isinstance(rate, str) else f"{rate:g}"


def _sweep_compare(result: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    from shared.loadgen.plots import _x_positions  # an infinite rate drawn past the largest finite one

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for i, (name, report) in enumerate(result["sweep"].items()):
        runs, color = report["runs"], f"C{i}"  # one colour per setup, p50 solid and p99 dashed
        xs, ticks, _ = _x_positions(runs)
        axes[0].plot(xs, [r["output_token_throughput"] for r in runs], "o-", color=color, label=name)
        for ax, key in zip(axes[1:], ("ttft_ms", "e2e_ms"), strict=True):
            for pct, style in (("p50", "o-"), ("p99", "s--")):
                ys = [float("nan") if r[key][pct] is None else r[key][pct] for r in runs]
                ax.plot(xs, ys, style, color=color, label=f"{name} {pct}")
    titles = ("output tokens/s", "TTFT (ms)", "E2E latency (ms)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set(title=title, xlabel="request rate (req/s)")
        ax.set_xticks(xs, ticks)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(result: dict, directory: str | Path) -> list[str]:
    """Write the plots into ``directory`` (created if missing); returns their paths."""
    from shared.loadgen import plots  # matplotlib (Agg) only when plots are asked for

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    if result["setups"]:
        model = next(iter(result["setups"].values()))["model"]
        runs = [report["runs"][0] | {"label": name} for name, report in result["setups"].items()]
        paths.append(out / "latency_cdf.png")
        plots.latency_cdfs({"model": f"{model}, by setup", "runs": runs}, paths[-1])
    for name, report in result["sweep"].items():
        paths.append(out / f"sweep_{name}.png")
        plots.sweep(report | {"model": f"{report['model']}, {name}"}, paths[-1])
    if len(result["sweep"]) > 1:
        paths.append(out / "sweep_compare.png")
        _sweep_compare(result, paths[-1])
    return [str(p) for p in paths]
