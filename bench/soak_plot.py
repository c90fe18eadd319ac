"""The soak's PNG: one panel per kind of series, every process in it, over the run's minutes.

Panels: RSS outside the caches as the change since the first sample (each process's fitted line
over the fit window dotted), open fds, free KV blocks
(totals dashed), the encoder cache and the orphan embeddings (caps dashed), prefix-cached blocks,
and the queue and inflight gauges. Dotted lines mark the end of the warm-up and of the load.
matplotlib is the ``loadgen`` extra; this module is imported only when the plot is drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench.soak_probe import FDS, IDLE_ZERO, NET_RSS
from shared.extras import require

require("matplotlib", extra="loadgen", feature="bench.soak's plot").use("Agg")
plt = require("matplotlib.pyplot", extra="loadgen", feature="bench.soak's plot")

MIB = 1 << 20
PANELS: tuple[tuple[str, tuple[str, ...], tuple[str, ...], float], ...] = (
    # title, series, their caps or totals (dashed), unit divisor
    ("RSS outside caches, change (MiB)", (NET_RSS,), (), MIB),
    ("open fds", (FDS,), (), 1),
    ("free KV blocks", ("prefill_free_blocks", "decode_free_blocks"), ("prefill_total_blocks", "decode_total_blocks"), 1),
    ("caches (MiB)", ("encoder_cache_bytes", "prefill_orphan_bytes"), ("encoder_cache_max_bytes",), MIB),
    ("prefix-cached blocks", ("prefill_prefix_cached_blocks",), (), 1),
    ("queues and inflight, summed per process", IDLE_ZERO, (), 1),
)  # fmt: skip


def _lines(ax: Any, series: dict, names: tuple[str, ...], divisor: float, style: str, offset: bool) -> None:
    """Each process in its own colour; ``offset``: as the change since its first sample. More than
    three names (the queues): their sum, one line per process."""
    for i, (proc, metrics) in enumerate(series.items()):
        picked = {k: np.asarray(pts) for k, pts in sorted(metrics.items()) if k.split("{")[0] in names}
        if len(names) > 3 and picked:  # samples of one process share their times
            picked = {
                "sum": np.stack([next(iter(picked.values()))[:, 0], sum(a[:, 1] for a in picked.values())], 1)
            }
        for key, a in picked.items():  # a: [n, 2], seconds and values
            if style == "--" and not a[0, 1]:
                continue  # a cap or total that is not set
            label = None if style == "--" else proc if len(names) == 1 or key == "sum" else f"{proc} {key}"
            y = (a[:, 1] - (a[0, 1] if offset else 0)) / divisor
            ax.plot(a[:, 0] / 60, y, style, color=f"C{i % 10}", label=label, lw=1)


def plot(report: dict, path: Path) -> str:
    series, (start, end) = report["series"], report["fit_window_s"]
    fig, axes = plt.subplots(2, 3, figsize=(18, 9))
    for ax, (title, names, dashed, divisor) in zip(axes.flat, PANELS, strict=True):
        rss = names == (NET_RSS,)
        _lines(ax, series, names, divisor, "-", rss)
        _lines(ax, series, dashed, divisor, "--", False)
        for i, (proc, fits) in enumerate(report["fits"].items()):
            if rss and (f := fits.get(NET_RSS)) is not None:
                xs, first = np.array([start, end]) / 60, series[proc][NET_RSS][0][1]
                ax.plot(
                    xs, (f["intercept"] + f["slope_per_min"] * xs - first) / divisor, ":", color=f"C{i % 10}"
                )
        for x in (start, end):
            ax.axvline(x / 60, color="grey", ls=":", lw=1)
        ax.set(title=title, xlabel="minutes")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="x-small")
    fig.suptitle(f"soak at {report['rate_rps']:.2f} req/s (capacity {report['capacity_rps']:.2f} req/s)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)
