"""``run(cfg)``: warm up, then one measured run per concurrency level or request rate, then the report.

Life cycle: resolve the model (GET /models unless given) -> draw and encode the warmup requests
and send them (not measured) -> for each level: draw and encode that run's requests up front (so
image and video generation never competes with sending), send them on the run's schedule with a
progress bar, summarize -> the report (config, environment, runs) -> JSON file and plots when
asked for.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import math
import os
import platform
import socket
import sys
import time
from dataclasses import asdict, fields
from typing import Any

import httpx
import numpy as np

from shared.extras import MissingExtra, require
from shared.loadgen.client import RequestRecord, send
from shared.loadgen.config import LoadConfig, level_label
from shared.loadgen.metrics import summarize
from shared.loadgen.schedule import closed_loop, open_loop
from shared.loadgen.workload import RequestSpec, Workload


def jsonable(obj: object) -> object:
    """Infinite floats become the string "inf" (JSON has no infinity); tuples become lists."""
    if isinstance(obj, float) and math.isinf(obj):
        return "inf" if obj > 0 else "-inf"
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return obj


def environment() -> dict:
    return {
        "host": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "argv": sys.argv,
    }


async def first_model(client: httpx.AsyncClient, base_url: str, headers: dict) -> str:
    resp = await client.get(f"{base_url}/models", headers=headers)
    resp.raise_for_status()
    return resp.json()["data"][0]["id"]


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, label: str, enabled: bool) -> Any:
    """tqdm's bar (the ``loadgen`` extra); without tqdm a note on stderr and no bar."""
    if not enabled:
        return _NoBar()
    try:
        tqdm = require("tqdm", extra="loadgen", feature="the progress bar").tqdm
    except MissingExtra as e:
        print(f"{e} (or --no-progress)", file=sys.stderr)
        return _NoBar()
    return tqdm(total=total, desc=label, unit="req", leave=False)


class _Sender:
    """Sends one batch of requests on a schedule and keeps their records."""

    def __init__(self, client: httpx.AsyncClient, cfg: LoadConfig, headers: dict) -> None:
        self.client, self.cfg, self.headers = client, cfg, headers
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"

    async def batch(
        self, specs: list[RequestSpec], mode: str, level: float, rng: np.random.Generator, label: str
    ) -> tuple[list[RequestRecord], float]:
        payloads = [json.dumps(s.body).encode() for s in specs]
        bar = progress_bar(len(specs), label, self.cfg.progress)
        t0 = time.perf_counter()

        async def do(i: int) -> RequestRecord:
            s = specs[i]
            rec = RequestRecord(i, s.n_images, s.prompt_words, s.max_tokens, s.n_videos)
            await send(self.client, self.url, payloads[i], self.headers, rec, t0, self.cfg.timeout)
            bar.update(1)
            return rec

        if mode == "concurrency":
            records = await closed_loop(len(specs), int(level), do)
        else:
            records = await open_loop(len(specs), level, rng, do, self.cfg.max_concurrency)
        duration = time.perf_counter() - t0
        bar.close()
        return records, duration


async def run_async(cfg: LoadConfig) -> dict:
    headers = {"Content-Type": "application/json"}
    if cfg.api_key:
        headers["Authorization"] = f"Bearer {cfg.api_key}"
    base = cfg.base_url.rstrip("/")
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)  # never a hidden cap
    async with httpx.AsyncClient(timeout=httpx.Timeout(cfg.timeout), limits=limits) as client:
        model = cfg.model or await first_model(client, base, headers)
        workload = Workload(cfg, model)
        sender = _Sender(client, cfg, headers)
        arrivals = np.random.default_rng([cfg.seed, 2])
        warmup = None
        if cfg.warmup:
            first = cfg.levels[0] if cfg.mode == "concurrency" else cfg.max_concurrency or cfg.warmup
            recs, dur = await sender.batch(
                workload.batch(cfg.warmup), "concurrency", first, arrivals, "warmup"
            )
            warmup = {"requests": len(recs), "failed": sum(not r.success for r in recs), "duration_s": dur}
        runs = []
        for level in cfg.levels:
            label = level_label(cfg.mode, level)
            specs = workload.batch(cfg.num_requests)
            records, duration = await sender.batch(specs, cfg.mode, level, arrivals, label)
            runs.append(_run_entry(cfg, level, label, records, duration))
    report = {
        "config": {f.name: getattr(cfg, f.name) for f in fields(cfg)},
        "environment": environment(),
        "model": model,
        "warmup": warmup,
        "images_generated": workload.images_made,
        "videos_generated": workload.videos_made,
        "runs": runs,
    }
    return jsonable(report)  # type: ignore[return-value]


def _run_entry(
    cfg: LoadConfig, level: float, label: str, records: list[RequestRecord], duration: float
) -> dict:
    entry = {
        "label": label,
        "mode": cfg.mode,
        "concurrency": int(level) if cfg.mode == "concurrency" else None,
        "request_rate": level if cfg.mode == "request_rate" else None,
        "max_concurrency": cfg.max_concurrency if cfg.mode == "request_rate" else int(level),
        **summarize(records, duration, cfg.slo),
    }
    entry["records"] = [asdict(r) | {"tpot_s": r.tpot_s} for r in records]  # run() may drop them
    return entry


def run(cfg: LoadConfig) -> dict:
    """Run the whole benchmark (blocking) and return the report; also writes ``cfg.out`` / ``cfg.plots``."""
    if cfg.plots:  # matplotlib (the loadgen extra) only when plots are asked for; missing: fail now
        from shared.loadgen.plots import write_plots
    report = asyncio.run(run_async(cfg))
    if cfg.plots:
        report["plots"] = write_plots(report, cfg.plots)
    if not cfg.keep_records:
        for entry in report["runs"]:
            entry.pop("records")
    if cfg.out:
        with open(cfg.out, "w") as f:
            json.dump(report, f, indent=1)
    return report
