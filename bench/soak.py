"""``python -m bench.soak``: a long mixed load at ~70% of capacity, after which nothing may have grown.

1. ``epd up`` on loopback with free ports (the bundled demo model, or ``--model``; extra flags with
   ``--epd-arg``), the encoders' cache capped at ``--encoder-cache-mib``: small enough to be full,
   and evicting, before the warm-up ends at the demo model's rates, so the fit sees a cache at
   its cap. Logs, the JSON report and the PNG go to ``--out`` (default: a new temp folder).
2. Capacity: a closed loop of ``--capacity-requests`` mixed requests (``bench/soak_load.py``: 0-3
   images, repeats, streamed and not, client disconnects) at ``--capacity-concurrency``; requests
   ended per second is the capacity, ``--load`` times it the soak's rate (or ``--rate``). This run
   is also the warm-up that opens what is opened lazily (sockets to peers, thread pools).
3. Baseline: the cluster settles (every KV pool whole, every queue empty, router inflight 0) and
   every process's open fds are taken.
4. Soak: Poisson arrivals at the rate for ``--minutes``; every ``--sample-s`` each process is
   sampled (``bench/soak_probe.py``: gauges and counters from ``/metrics``, RSS and open fds
   through ``ProcessCollector``; ``/proc`` for ``epd up`` itself).
5. The load stops; within ``--settle-s`` the cluster must be back at rest with no more open fds
   than at the baseline (+ ``--fd-tolerance``).
6. Report: per series a least-squares slope per minute over the soak after ``--warmup-min``, a
   table on stdout, ``soak.json`` (config, capacity, counts, samples, fits, problems), ``soak.png``.

Exits 1 when a request failed (a client's own disconnect is no failure); when a process's RSS
outside its capped caches (the encoder's embedding cache, prefill's orphan embeddings: filling
them is no leak) grew faster than ``--rss-slope-mib-min`` and by more than ``--rss-floor-mib``
over the fit window; when open fds or a pool, queue or inflight count did not come back; or when
a cache was over its cap in any sample. ``tests/soak`` is the suite's exact-return variant.

The RSS limits: on the demo model at 10-18 requests/s (2 shared cores, 3-minute runs) the router,
decode worker and a full encoder grew by under 0.5 MiB/min; prefill by up to 2 MiB/min while its
prefix cache's hash tables fill (bounded: one entry per KV block, ~10 MB for the demo's pool, full
after ~10 minutes at that rate). The default limit, 2 MiB/min, is a leak of 3.5 KB per request
at 10 requests/s; the floor keeps a short run's warm-up from counting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bench.servers import Server, serve
from bench.soak_load import Driver, Mix, Tally, first_model
from bench.soak_probe import (
    CAPS,
    FDS,
    IDLE_ZERO,
    NET_RSS,
    POOLS,
    RSS,
    Recorder,
    cap_problems,
    cluster_procs,
    settle,
)

MIB = 1 << 20


@dataclass
class SoakConfig:
    model: Path | None = None  # None: epd up's bundled demo model
    minutes: float = 30.0
    rate: float | None = None  # requests/s; None: load x the measured capacity
    load: float = 0.7
    capacity_requests: int = 120
    capacity_concurrency: int = 8
    max_inflight: int = 64
    sample_s: float = 5.0
    warmup_min: float | None = None  # None: a quarter of the run, at most 5 minutes
    settle_s: float = 60.0
    rss_slope_mib_min: float = 2.0
    rss_floor_mib: float = 16.0
    fd_tolerance: int = 0
    encoder_cache_mib: int = 16  # full within the warm-up at the demo's rates; 0: the encoder's default
    epd_args: tuple[str, ...] = ()
    out: Path | None = None
    seed: int = 0
    mix: Mix = field(default_factory=Mix)

    @property
    def warmup(self) -> float:
        return self.warmup_min if self.warmup_min is not None else min(5.0, self.minutes / 4)


def fit(points: list[list[float]], start_s: float, end_s: float) -> dict[str, float] | None:
    """Least-squares line through the points in [start_s, end_s]: slope per minute and the range."""
    pts = np.asarray([p for p in points if start_s <= p[0] <= end_s])  # [n, 2]: seconds, value
    if len(pts) < 3:
        return None
    slope, intercept = np.polyfit(pts[:, 0] / 60, pts[:, 1], 1)  # value = intercept + slope * minutes
    v = pts[:, 1]
    return {"slope_per_min": float(slope), "intercept": float(intercept), "first": float(v[0]),
            "last": float(v[-1]), "min": float(v.min()), "max": float(v.max()), "n": len(v)}  # fmt: skip


def watched(key: str) -> bool:
    """The series the table and the plot show."""
    names = (
        RSS,
        NET_RSS,
        FDS,
        *IDLE_ZERO,
        *(n for pair in CAPS for n in pair),
        *(f"{p}_free_blocks" for p in POOLS),
    )
    return key.split("{")[0] in names


def problems(cfg: SoakConfig, tallies: dict[str, Tally], fits: dict, window: tuple[float, float],
             before: list[str], after: list[str], caps: list[str]) -> list[str]:  # fmt: skip
    out = [f"{name} run: {n}x {kind}" for name, t in tallies.items() for kind, n in t.error_kinds().items()]
    out += [f"not at rest after the capacity run: {p}" for p in before]
    out += [f"not at rest {cfg.settle_s:g} s after the load: {p}" for p in after]
    out += caps
    minutes = (window[1] - window[0]) / 60
    for proc, series in fits.items():
        if (f := series.get(NET_RSS)) is None:
            continue
        slope = f["slope_per_min"] / MIB
        if slope > cfg.rss_slope_mib_min and slope * minutes > cfg.rss_floor_mib:
            out.append(
                f"{proc}: RSS outside caches grows {slope:.2f} MiB/min over {minutes:.1f} min (limits "
                f"{cfg.rss_slope_mib_min:g} MiB/min, {cfg.rss_floor_mib:g} MiB; {f['first'] / MIB:.0f} -> "
                f"{f['last'] / MIB:.0f} MiB)"
            )
    return out


def run(cfg: SoakConfig) -> dict:
    from bench.soak_plot import plot  # matplotlib (the loadgen extra): missing, fail before the run

    out = cfg.out or Path(tempfile.mkdtemp(prefix="soak-"))
    logs = out / "logs"
    cmd = (
        sys.executable, "-m", "router.cli", "up", *(("--model", str(cfg.model)) if cfg.model else ()),
        "--base-port", "0", "--log-dir", str(logs), *cfg.epd_args,
    )  # fmt: skip
    env = {**os.environ} | (
        {"ENCODER_CACHE_BYTES": str(cfg.encoder_cache_mib * MIB)} if cfg.encoder_cache_mib else {}
    )
    started: list = []
    with serve(Server("epd", cmd, "cluster ready", 600, env=env), logs, started=started.append) as url:
        base = url.removesuffix("/v1")
        procs = cluster_procs(logs, started[0].pid)
        driver = Driver(base, first_model(base), cfg.mix, cfg.seed)
        print(f"cluster up ({', '.join(p.name for p in procs)}); measuring capacity", flush=True)
        cap = asyncio.run(driver.closed(cfg.capacity_requests, cfg.capacity_concurrency))
        capacity = len(cap.outcomes) / cap.duration_s
        rate = cfg.rate or cfg.load * capacity
        before = settle(procs, cfg.settle_s)
        print(
            f"capacity {capacity:.2f} req/s; soaking at {rate:.2f} req/s for {cfg.minutes:g} min", flush=True
        )
        t0 = time.monotonic()
        recorder = Recorder(procs, cfg.sample_s, t0)
        recorder.start()
        soak = asyncio.run(driver.open(cfg.minutes * 60, rate, cfg.max_inflight))
        load_end = time.monotonic() - t0
        after = settle(procs, cfg.settle_s, before.sample, cfg.fd_tolerance)
        recorder.stop()
    series = recorder.series()
    start = cfg.warmup * 60
    fits = {p: {k: f for k, pts in s.items() if (f := fit(pts, start, load_end))} for p, s in series.items()}
    caps = sorted({c for _, s in recorder.rows for c in cap_problems(s)})
    tallies = {"capacity": cap, "soak": soak}
    report = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "out": str(out),
        "capacity_rps": capacity,
        "rate_rps": rate,
        "requests": {name: t.counts() for name, t in tallies.items()},
        "errors": {name: t.error_kinds() for name, t in tallies.items()},
        "fit_window_s": [start, load_end],
        "settle_s": after.waited_s,
        "baseline": before.sample,
        "end": after.sample,
        "fits": fits,
        "series": series,
        "scrape_failures": recorder.failures,
        "problems": problems(cfg, tallies, fits, (start, load_end), before.problems, after.problems, caps),
    }
    (out / "soak.json").write_text(json.dumps(report, indent=1))
    report["png"] = plot(report, out / "soak.png")
    return report


def table(report: dict) -> str:
    head = ("process", "series", "baseline", "min", "max", "end", "slope/min")
    rows, zero = [head], 0
    for proc, series in report["fits"].items():
        for key, f in sorted(series.items()):
            if not watched(key):
                continue
            scale, name = (MIB, f"{key} (MiB)") if key.endswith("bytes") else (1, key)
            before, after = (report[k].get(proc, {}).get(key) for k in ("baseline", "end"))
            cells = (before, f["min"], f["max"], after, f["slope_per_min"])
            if not any(cells):
                zero += 1
                continue
            rows.append((proc, name, *("-" if v is None else f"{v / scale:.2f}" for v in cells)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ) + (f"\n({zero} more watched series were 0 throughout)" if zero else "")


def main(argv: Sequence[str] | None = None) -> int:
    d = SoakConfig()
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help="checkpoint (default: the bundled demo)")
    p.add_argument("--minutes", type=float, default=d.minutes)
    p.add_argument("--rate", type=float, default=None, help="requests/s (default: --load x capacity)")
    p.add_argument("--load", type=float, default=d.load, help="share of the measured capacity")
    p.add_argument("--capacity-requests", type=int, default=d.capacity_requests)
    p.add_argument("--capacity-concurrency", type=int, default=d.capacity_concurrency)
    p.add_argument("--max-inflight", type=int, default=d.max_inflight, help="cap on requests in flight")
    p.add_argument("--sample-s", type=float, default=d.sample_s)
    p.add_argument("--warmup-min", type=float, default=None, help="left out of the fit (default: 1/4, <= 5)")
    p.add_argument("--settle-s", type=float, default=d.settle_s)
    p.add_argument("--rss-slope-mib-min", type=float, default=d.rss_slope_mib_min)
    p.add_argument("--rss-floor-mib", type=float, default=d.rss_floor_mib, help="least growth that fails")
    p.add_argument("--fd-tolerance", type=int, default=d.fd_tolerance)
    p.add_argument("--encoder-cache-mib", type=int, default=d.encoder_cache_mib)
    p.add_argument("--epd-arg", action="append", default=[], help="extra flag for epd up (repeatable)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--seed", type=int, default=d.seed)
    a = p.parse_args(argv)
    cfg = SoakConfig(**{k: v for k, v in vars(a).items() if k != "epd_arg"}, epd_args=tuple(a.epd_arg))
    report = run(cfg)
    print(table(report))
    print(f"requests: {json.dumps(report['requests'])}; settled in {report['settle_s']:.1f} s")
    print(f"wrote {report['out']}/soak.json and {report['png']}")
    for line in report["scrape_failures"]:
        print(f"scrape failed at {line}", file=sys.stderr)
    for line in report["problems"]:
        print(f"FAIL: {line}", file=sys.stderr)
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
