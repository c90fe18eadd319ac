"""``python -m bench.elastic``: the cluster changes shape under load, and no request is lost.

Real processes on loopback (``shared.supervisor``), the bundled demo model by default: two routers
(no worker lists: every worker registers with both through ``--report-to``), one encoder, one
prefill and one decode worker. A closed-loop load of streamed chat requests (one image each,
``shared.loadgen``'s workload) is spread over both routers and runs on through three steps;
``--num-requests // 4`` requests complete before the first step and after each one, and at least
``--num-requests`` in all:

1. a second encoder and a second decode worker start; the delay from each one's ready file to its
   registration at both routers is printed, and by the end each must have served requests (its
   own counters: images encoded, KV imports);
2. the first decode worker and the first encoder get SIGTERM: each drains (finishes what it
   holds, deregisters) and must exit 0 with nothing in flight;
3. the first router is taken out of the load's rotation and, once the requests already sent to it
   have their first token (a load balancer's deregistration delay), gets SIGTERM while its streams
   run: they must finish, it must exit 0; from then on the load goes to the other router only.

Prints what happened and exits 1 if any acceptance point fails (a failed request, a new worker
that served nothing, a drain or router exit that was not clean). ``tests/elastic`` runs a smaller
variant of the same scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shared.assets import DEMO_MODEL_DIR
from shared.loadgen.client import RequestRecord, send
from shared.loadgen.config import LoadConfig
from shared.loadgen.workload import Workload
from shared.supervisor import ServiceSpec, Supervisor

ROUTERS = ("router-a", "router-b")
JSON = {"Content-Type": "application/json"}


@dataclass
class Scenario:
    model: Path = DEMO_MODEL_DIR
    num_requests: int = 240
    concurrency: int = 8
    max_tokens: int = 16
    image_size: str = "64x64"
    decode_flags: tuple[str, ...] = ()  # extra flags for the decode workers
    log_dir: Path | None = None
    timeout_s: float = 120.0  # one request's


@dataclass
class Outcome:
    records: list[RequestRecord] = field(default_factory=list)
    by_router: dict[str, int] = field(default_factory=dict)
    join_delay_s: dict[str, float] = field(default_factory=dict)  # ready file -> known to both routers
    served: dict[str, float] = field(default_factory=dict)  # new workers' counters at the end
    exits: dict[str, int] = field(default_factory=dict)  # drained worker / router -> exit status
    drained_clean: dict[str, bool] = field(default_factory=dict)  # "drained: nothing in flight" logged
    router_streams_at_sigterm: int = 0
    duration_s: float = 0.0

    @property
    def failed(self) -> list[RequestRecord]:
        return [r for r in self.records if not r.success]

    def problems(self) -> list[str]:
        out = [f"request {r.index} failed: {r.error_kind} {r.error}" for r in self.failed]
        out += [f"{w} served nothing ({what})" for w, what in self.served.items() if not what]
        out += [f"{name} exited with {code}" for name, code in self.exits.items() if code != 0]
        out += [f"{name} did not drain cleanly" for name, ok in self.drained_clean.items() if not ok]
        return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker(sc: Scenario, name: str, module: str, inboxes: list[str], *ports: str) -> ServiceSpec:
    model = sc.model
    extra = sc.decode_flags if module == "services.decode" else ()
    args = (*extra,
        "--model", str(model), "--dtype", "float32", "--torch-threads", "1", "--host", "127.0.0.1",
        "--report-to", ",".join(inboxes), "--report-interval-s", "0.25", "--drain-timeout-s", "60", *ports,
    )  # fmt: skip
    return ServiceSpec(name, module, args)


def known_workers(http: str) -> set[str]:
    """Addresses of the workers a router has registered and takes as live (its /debug/requests)."""
    with urllib.request.urlopen(f"{http}/debug/requests", timeout=5) as resp:
        snap = json.load(resp)
    return {
        w.get("zmq") or w.get("kv")
        for kind in ("encoders", "prefills", "decodes")
        for w in snap[kind]
        if w["live"]
    }


def counter(http: str, name: str) -> float:
    with urllib.request.urlopen(f"{http}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    m = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


class Run:
    def __init__(self, sc: Scenario, log_dir: Path) -> None:
        self.sc, self.log_dir = sc, log_dir
        self.inbox_ports = {r: free_port() for r in ROUTERS}
        self.inboxes = [f"tcp://127.0.0.1:{p}" for p in self.inbox_ports.values()]
        m = sc.model
        specs = [
            worker(sc, "encoder-0", "services.encoder", self.inboxes, "--port", "0", "--http-port", "0"),
            worker(sc, "prefill-0", "services.prefill", self.inboxes, "--port", "0", "--inbox-port", "0",
                   "--http-port", "0"),
            worker(sc, "decode-0", "services.decode", self.inboxes, "--port", "0", "--kv-port", "0",
                   "--http-port", "0"),
            *(ServiceSpec(r, "router", (
                "--model", str(m), "--host", "127.0.0.1", "--port", "0", "--inbox-host", "127.0.0.1",
                "--inbox-port", str(self.inbox_ports[r]), "--heartbeat-timeout-s", "3", "--drain-timeout-s", "60",
            )) for r in ROUTERS),
        ]  # fmt: skip
        self.sup = Supervisor(specs, log_dir)
        self.out = Outcome()
        self.open_routers = list(ROUTERS)
        self.inflight = {r: 0 for r in ROUTERS}
        self.open_records: dict[str, list[RequestRecord]] = {r: [] for r in ROUTERS}
        self.routing = threading.Lock()  # a request's choice of router against the router's removal

    def start(self) -> None:
        self.ready = self.sup.start(timeout=600)
        self.urls = {r: self.ready[r]["http"] for r in ROUTERS}

    # ----- the scenario's steps (blocking; run in a thread) -------------------------------------------
    def grow(self) -> None:
        new = {
            "encoder-1": worker(self.sc, "encoder-1", "services.encoder", self.inboxes, "--port", "0", "--http-port", "0"),
            "decode-1": worker(self.sc, "decode-1", "services.decode", self.inboxes, "--port", "0", "--kv-port", "0",
                               "--http-port", "0"),
        }  # fmt: skip
        for name, spec in new.items():
            info = self.sup.add(spec)
            t0, address = time.monotonic(), info.get("zmq") or info["kv"]
            while not all(address in known_workers(self.urls[r]) for r in ROUTERS):
                if time.monotonic() - t0 > 30:
                    raise RuntimeError(f"{name} ({address}) did not register with both routers in 30 s")
                time.sleep(0.02)
            self.out.join_delay_s[name] = time.monotonic() - t0
            self.ready[name] = info

    def shrink(self) -> None:
        for name in ("decode-0", "encoder-0"):
            self.out.exits[name] = self.sup.drain(name)
            log = (self.log_dir / f"{name}.log").read_text(errors="replace")
            self.out.drained_clean[name] = "drained: nothing in flight" in log

    def stop_router(self) -> None:
        name = ROUTERS[0]
        deadline = time.monotonic() + 30
        while self.inflight[name] == 0 and time.monotonic() < deadline:  # signal it mid-stream
            time.sleep(0.005)
        with self.routing:
            self.open_routers.remove(name)  # the load balancer takes it out first
            sent = list(self.open_records[name])
        # and, as a load balancer's deregistration delay, signals it once the requests already sent
        # to it have been answered (first token): one still on its way when the server closes its
        # idle keep-alive connections would be reset there (a client-side ReadError), not drained.
        while any(r.ttft_s is None and r.error_kind is None for r in sent) and time.monotonic() < deadline:
            time.sleep(0.005)
        self.out.router_streams_at_sigterm = self.inflight[name]
        self.out.exits[name] = self.sup.drain(name)

    def count_served(self) -> None:
        self.out.served["encoder-1"] = counter(self.ready["encoder-1"]["http"], "encoder_images_total")
        self.out.served["decode-1"] = counter(self.ready["decode-1"]["http"], "decode_imports_total")

    # ----- the load -----------------------------------------------------------------------------------
    async def load(self) -> None:
        """Closed loop until the last step is done and every phase saw its share of requests:
        ``num_requests // 4`` complete before the first step and after each one (the load runs
        on while a step does), and at least ``num_requests`` in all."""
        sc = self.sc
        cfg = LoadConfig(
            base_url=self.urls[ROUTERS[1]], num_requests=sc.num_requests, concurrency=sc.concurrency, seed=0,
            images="1", image_size=sc.image_size, max_tokens=str(sc.max_tokens), ignore_eos=True,
        )  # fmt: skip
        workload = Workload(cfg, "demo")
        quota = max(1, sc.num_requests // 4)
        done, sent, finished = 0, 0, False
        t0 = time.perf_counter()
        async with httpx.AsyncClient(timeout=sc.timeout_s) as client:
            model = (await client.get(f"{self.urls[ROUTERS[1]]}/v1/models")).json()["data"][0]["id"]

            async def one(i: int) -> None:
                nonlocal done
                spec = workload.next()
                rec = RequestRecord(i, spec.n_images, spec.prompt_words, spec.max_tokens)
                with self.routing:
                    router = self.open_routers[i % len(self.open_routers)]
                    self.open_records[router].append(rec)
                payload = json.dumps({**spec.body, "model": model}).encode()
                self.inflight[router] += 1
                try:
                    await send(
                        client,
                        f"{self.urls[router]}/v1/chat/completions",
                        payload,
                        JSON,
                        rec,
                        t0,
                        sc.timeout_s,
                    )
                finally:
                    self.inflight[router] -= 1
                    with self.routing:
                        self.open_records[router].remove(rec)
                self.out.records.append(rec)
                self.out.by_router[router] = self.out.by_router.get(router, 0) + 1
                done += 1

            async def loop() -> None:
                nonlocal sent
                while not finished:
                    sent += 1
                    await one(sent - 1)

            async def completed(n: int) -> None:
                while done < n:
                    await asyncio.sleep(0.01)

            async def control() -> None:
                nonlocal finished
                await completed(quota)
                for step in (self.grow, self.shrink, self.stop_router):
                    await asyncio.to_thread(step)
                    await completed(done + quota)
                await completed(sc.num_requests)
                finished = True

            await asyncio.gather(control(), *(loop() for _ in range(sc.concurrency)))
        self.out.duration_s = time.perf_counter() - t0


def run(sc: Scenario) -> Outcome:
    log_dir = sc.log_dir or Path(tempfile.mkdtemp(prefix="elastic-"))
    r = Run(sc, log_dir)
    r.start()
    try:
        asyncio.run(r.load())
        r.count_served()
    finally:
        r.sup.stop(timeout=30)
    return r.out


def report(out: Outcome) -> str:
    ok = len(out.records) - len(out.failed)
    lines = [
        f"requests: {ok} ok, {len(out.failed)} failed of {len(out.records)} in {out.duration_s:.1f} s "
        f"(by router: {', '.join(f'{k} {v}' for k, v in sorted(out.by_router.items()))})",
        *(f"{w}: registered with both routers {d * 1000:.0f} ms after its ready file" for w, d in out.join_delay_s.items()),
        *(f"{w}: served {v:.0f} ({'images' if w.startswith('encoder') else 'KV imports'})" for w, v in out.served.items()),
        *(f"{w}: drained, exit {out.exits[w]}, nothing in flight: {out.drained_clean[w]}" for w in out.drained_clean),
        f"{ROUTERS[0]}: SIGTERM with {out.router_streams_at_sigterm} streams open, exit {out.exits.get(ROUTERS[0])}",
    ]  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.elastic", description=__doc__.split("\n\n")[0])
    d = Scenario()
    p.add_argument("--model", type=Path, default=d.model)
    p.add_argument("--num-requests", type=int, default=d.num_requests)
    p.add_argument("--concurrency", type=int, default=d.concurrency)
    p.add_argument("--max-tokens", type=int, default=d.max_tokens)
    p.add_argument("--log-dir", type=Path, default=None)
    p.add_argument(
        "--decode-flag", action="append", default=[], help="extra flag for decode workers (repeatable)"
    )
    args = p.parse_args(argv)
    sc = Scenario(
        args.model, args.num_requests, args.concurrency, args.max_tokens,
        decode_flags=tuple(args.decode_flag), log_dir=args.log_dir,
    )  # fmt: skip
    out = run(sc)
    print(report(out))
    problems = out.problems()
    for line in problems:
        print(f"FAIL: {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
