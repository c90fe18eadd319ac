"""What the soak watches: every process of a local cluster, sampled from its ``/metrics`` and ``/proc``.

The processes come from the ready files in ``epd up``'s log directory (router, encoders, prefill
and decode workers: their ``http`` and ``pid``) plus ``epd up`` itself (no ``/metrics``: its RSS
and open fds are read from ``/proc/<pid>``). A sample keeps each process's gauges and counters by
key (``name`` or ``name{label=value,...}``); the services export ``process_resident_memory_bytes``
and ``process_open_fds`` through prometheus_client's ``ProcessCollector``; a router's sample also
holds what its ``/debug/requests`` shows (``debug_live_requests``, ``debug_worker_inflight``), and
every sample ``rss_outside_caches_bytes``, RSS less the bytes of the capped caches.

``idle_problems`` says why a cluster is not back at rest (a pool not whole, a queue not empty,
more open fds than a baseline); ``cap_problems`` why a cache is over its cap; ``settle`` polls
until the former is empty or a deadline passes (gauges change at each worker's report time).
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

RSS, FDS = "process_resident_memory_bytes", "process_open_fds"
NET_RSS = "rss_outside_caches_bytes"  # RSS less what the capped caches hold: filling them is no leak
CACHE_BYTES = ("encoder_cache_bytes", "prefill_orphan_bytes")
# Gauges that are 0 once nothing is in flight.
IDLE_ZERO = (
    "router_inflight_requests", "router_queue_depth", "debug_live_requests", "debug_worker_inflight",
    "encoder_queue_images", "encoder_queue_patches",
    "prefill_waiting_requests", "prefill_running_requests", "prefill_transfers",
    "decode_running_requests", "decode_queued_requests", "decode_pending_reservations",
)  # fmt: skip
# (value, cap): a cache never holds more than its cap.
CAPS = (
    ("encoder_cache_bytes", "encoder_cache_max_bytes"),
    ("prefill_orphan_bytes", "prefill_orphan_max_bytes"),
    ("prefill_prefix_cached_blocks", "prefill_total_blocks"),
    ("router_image_homes", "router_image_homes_max"),
)
POOLS = ("prefill", "decode")  # <pool>_free_blocks must come back to <pool>_total_blocks

Sample = dict[str, dict[str, float]]  # process -> metric key -> value


@dataclass(frozen=True)
class Proc:
    name: str
    pid: int
    http: str = ""  # base URL of its /metrics; "" for epd up itself


def cluster_procs(log_dir: Path, epd_pid: int | None = None) -> list[Proc]:
    """The processes of the cluster whose ready files are in ``log_dir`` (and ``epd up``'s own)."""
    procs = []
    for path in sorted(log_dir.glob("*.ready.json")):
        info = json.loads(path.read_text())
        procs.append(Proc(path.name.removesuffix(".ready.json"), int(info["pid"]), info["http"]))
    return procs + ([Proc("epd", epd_pid)] if epd_pid else [])


def _key(name: str, labels: dict[str, str]) -> str:
    return name if not labels else name + "{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}"


def parse_metrics(text: str) -> dict[str, float]:
    """Gauges and counters of a Prometheus text page (``*_created`` stamps left out)."""
    return {
        _key(s.name, s.labels): float(s.value)
        for fam in text_string_to_metric_families(text)
        if fam.type in ("gauge", "counter")
        for s in fam.samples
        if not s.name.endswith("_created")
    }


def proc_stats(pid: int) -> dict[str, float]:
    """RSS and open fds from ``/proc`` (Linux); {} when the process is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return {}
    kib = next(int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmRSS:"))
    return {RSS: kib * 1024.0, FDS: float(fds)}


def _get(url: str, timeout: float) -> bytes:
    req = urllib.request.Request(url, headers={"Connection": "close"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read()


def router_debug(http: str, timeout: float = 5.0) -> dict[str, float]:
    """What a router's ``/debug/requests`` holds: live requests, and its load count per worker (what
    it balances by: a count that does not come back skews the choice for good)."""
    try:
        snap = json.loads(_get(http + "/debug/requests", timeout))
    except urllib.error.HTTPError:  # 503: its loop did not answer in time; next sample
        return {}
    out = {"debug_live_requests": float(len(snap["requests"]))}
    for kind in ("encoders", "prefills", "decodes"):
        for w in snap[kind]:
            out[_key("debug_worker_inflight", {"worker": w.get("zmq") or w.get("kv", "")})] = float(
                w["inflight"]
            )
    return out


def scrape(proc: Proc, timeout: float = 5.0) -> dict[str, float]:
    if not proc.http:
        return with_net_rss(proc_stats(proc.pid))
    got = parse_metrics(_get(proc.http + "/metrics", timeout).decode())
    if RSS not in got:  # not Linux: no ProcessCollector
        got |= proc_stats(proc.pid)
    if "router_inflight_requests" in got:
        got |= router_debug(proc.http, timeout)
    return with_net_rss(got)


def with_net_rss(metrics: dict[str, float]) -> dict[str, float]:
    if RSS not in metrics:
        return metrics
    return {**metrics, NET_RSS: metrics[RSS] - sum(metrics.get(c, 0.0) for c in CACHE_BYTES)}


def sample(procs: list[Proc]) -> Sample:
    return {p.name: scrape(p) for p in procs}


def values(metrics: dict[str, float], name: str) -> list[float]:
    """Every series of ``name`` (one per label set)."""
    return [v for k, v in metrics.items() if k == name or k.startswith(name + "{")]


def idle_problems(s: Sample, fds_before: Sample | None = None, fd_tolerance: int = 0) -> list[str]:
    out = []
    for proc, m in s.items():
        for pool in POOLS:
            free, total = m.get(f"{pool}_free_blocks"), m.get(f"{pool}_total_blocks")
            if free is not None and free != total:
                out.append(f"{proc}: {pool} pool has {free:.0f} of {total:.0f} blocks free")
        for name in IDLE_ZERO:
            if any(values(m, name)):
                out.append(f"{proc}: {name} = {sum(values(m, name)):g}, not 0")
        base = (fds_before or {}).get(proc, {}).get(FDS)
        if base is not None and (now := m.get(FDS, 0.0)) > base + fd_tolerance:
            out.append(f"{proc}: {now:.0f} open fds, {base:.0f} before the run")
    return out


def cap_problems(s: Sample) -> list[str]:
    return [
        f"{proc}: {name} {m[name]:.0f} over its cap {cap}={m[cap]:.0f}"
        for proc, m in s.items()
        for name, cap in CAPS
        if name in m and cap in m and m[name] > m[cap]
    ]


@dataclass
class Settled:
    sample: Sample
    problems: list[str] = field(default_factory=list)
    waited_s: float = 0.0


def settle(
    procs: list[Proc], timeout: float, fds_before: Sample | None = None, fd_tolerance: int = 0,
    interval: float = 0.25,
) -> Settled:  # fmt: skip
    """Poll until nothing is in ``idle_problems`` or ``cap_problems``, or ``timeout`` seconds pass."""
    start = time.monotonic()
    while True:
        s = sample(procs)
        problems = idle_problems(s, fds_before, fd_tolerance) + cap_problems(s)
        waited = time.monotonic() - start
        if not problems or waited > timeout:
            return Settled(s, problems, waited)
        time.sleep(interval)


class Recorder(threading.Thread):
    """Samples ``procs`` every ``interval`` seconds until ``stop``; ``rows`` are (seconds since
    ``t0``, sample). A scrape that fails (a process busy past the timeout) is logged and skipped."""

    def __init__(self, procs: list[Proc], interval: float, t0: float) -> None:
        super().__init__(name="soak-recorder", daemon=True)
        self.procs, self.interval, self.t0 = procs, interval, t0
        self.rows: list[tuple[float, Sample]] = []
        self.failures: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            t = time.monotonic() - self.t0
            try:
                self.rows.append((t, sample(self.procs)))
            except OSError as e:
                self.failures.append(f"{t:.0f} s: {type(e).__name__}: {e}")
            self.done.wait(self.interval)

    def stop(self) -> None:
        self.done.set()
        self.join()

    def series(self) -> dict[str, dict[str, list[list[float]]]]:
        """process -> metric key -> [[t, value], ...]."""
        out: dict[str, dict[str, list[list[float]]]] = {}
        for t, s in self.rows:
            for proc, metrics in s.items():
                for key, v in metrics.items():
                    out.setdefault(proc, {}).setdefault(key, []).append([t, v])
        return out
