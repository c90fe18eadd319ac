"""Fuzz the router's HTTP API from its own OpenAPI schema, and check that it holds up.

    python -m bench.fuzz_http --requests 2000 [--seed 0] [--concurrency 4] [--colocated]
    python -m bench.fuzz_http --url http://127.0.0.1:8000 --log-dir LOGS   # a running `epd up`

Without ``--url`` it starts ``epd up`` on a tiny random checkpoint (one encoder, prefill and decode
worker; ``--colocated``: the router alone) on loopback, and stops it afterwards. The requests are
drawn by hypothesis from ``/openapi.json`` (``bench/fuzz_requests.py``: schema-valid bodies,
mutated ones, raw malformed bytes, probes of every route) with a fixed seed, and sent
``--concurrency`` at a time. Every answer must hold:

- no 5xx but 503 and 504 (overload and timeouts, by design);
- a 4xx or 5xx answer is OpenAI's error JSON, ``{"error": {"message", "type", "param", "code"}}``
  (``/health`` and ``/livez`` answer 503 with their own JSON); a 3xx only redirects a path with a
  trailing slash to the route without it (Starlette's), or the other way;
- a 200 from a POST route is a completion, or SSE whose events are JSON and which ends in
  ``data: [DONE]`` (after an error event, if any);
- the router answers every request, and ``/livez`` after the run.

After the run, with every request finished or abandoned, the cluster must settle (polled until a
deadline, since gauges update when workers report): the router's ``router_inflight_requests`` is 0
and every worker's KV pool has all its blocks free and nothing queued or running (colocated: the
engine's, from ``/debug/requests``). Prints the counts by route and status, every violation and
every leak; exits 1 if there was any.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from hypothesis import HealthCheck, Phase, given, seed, settings

from bench.fuzz_requests import Call, MiB, calls

BY_DESIGN_5XX = (503, 504)
OWN_503 = {"/health": "ready", "/livez": "live"}  # readiness probes answer 503 in their own shape
DONE = b"data: [DONE]"
ANSWER_S = 60.0  # the longest a request may take (a few tokens of a tiny model, on a busy CPU)


@dataclass
class Outcome:
    call: Call
    status: int | str  # the HTTP status ("200, left": we left the stream early), or "hangup" (before it)
    problems: list[str] = field(default_factory=list)
    code: str | None = None  # an error answer's ``error.code`` (or its type)


@dataclass
class Report:
    counts: Counter = field(default_factory=Counter)  # (method route, status) -> requests
    kinds: Counter = field(default_factory=Counter)
    codes: Counter = field(default_factory=Counter)  # error codes answered, over every route
    violations: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    alive: bool = True
    seconds: float = 0.0
    routes: frozenset[str] = frozenset()  # the schema's paths; others are counted as "(other)"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, out: Outcome) -> None:
        known = out.call.route if out.call.route in self.routes else "(other)"
        with self.lock:
            self.counts[(f"{out.call.method} {known}", out.status)] += 1
            self.kinds[out.call.kind] += 1
            if out.code is not None:
                self.codes[out.code] += 1
            self.violations += [f"{p} <- {describe(out.call)}" for p in out.problems]

    @property
    def sent(self) -> int:
        return sum(self.counts.values())

    @property
    def ok(self) -> bool:
        return self.alive and not self.violations and not self.leaks

    def lines(self) -> list[str]:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.kinds.items()))
        out = [
            f"{self.sent} requests in {self.seconds:.1f} s ({kinds})",
            f"{'route':40} {'status':>9} {'count':>6}",
        ]
        fives: Counter = Counter()
        for (route, status), n in sorted(self.counts.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
            out.append(f"{route:40} {status!s:>9} {n:>6}")
            if isinstance(status, int) and status >= 500:
                fives[status] += n
        out.append("error codes: " + ", ".join(f"{c} {n}" for c, n in self.codes.most_common()))
        unexpected = sum(n for s, n in fives.items() if s not in BY_DESIGN_5XX)
        out.append(f"5xx: {dict(sorted(fives.items())) or 'none'}; unexpected 5xx: {unexpected}")
        out.append(f"property violations: {len(self.violations)}")
        out += [f"  {v}" for v in self.violations[:50]]
        out.append(f"server alive afterwards: {'yes' if self.alive else 'NO'}")
        out.append(f"leaks after settling: {len(self.leaks)}" + "".join(f"\n  {x}" for x in self.leaks))
        out.append("OK" if self.ok else "FAILED")
        return out


def describe(call: Call, limit: int = 300) -> str:
    body = (
        repr(call.body[:limit]) + ("..." if call.body and len(call.body) > limit else "") if call.body else ""
    )
    return f"{call.kind} {call.method} {call.path[:100]} {call.headers} {body}"


# ----- checks --------------------------------------------------------------------------------------
def error_shape(body: bytes) -> str | None:
    """None when ``body`` is OpenAI's error JSON, else what is wrong with it."""
    try:
        err = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        err = None
    if not isinstance(err, dict) or set(err) != {"message", "type", "param", "code"}:
        return f"not an OpenAI error body: {body[:200]!r}"
    strings = [err["message"], err["type"]] + [err[k] for k in ("param", "code") if err[k] is not None]
    if not all(isinstance(v, str) for v in strings):
        return f"an OpenAI error body with fields of other types: {body[:200]!r}"
    return None


def _json(body: bytes) -> object:
    try:
        return json.loads(body)
    except ValueError:
        return None


def sse_problems(body: bytes, complete: bool) -> list[str]:
    """Well-formed SSE: ``data: <JSON>`` events, errors in OpenAI's shape, ``[DONE]`` last."""
    events = body.split(b"\n\n")
    tail = events.pop()  # what follows the last blank line: nothing, unless we hung up mid-event
    if complete and tail:
        return [f"SSE ends without a blank line: {tail[:100]!r}"]
    problems, errored = [], False
    for i, ev in enumerate(events):
        if not ev.startswith(b"data: "):
            return [f"SSE event {i} is not a data line: {ev[:100]!r}"]
        if ev == DONE:
            if i != len(events) - 1:
                problems.append(f"SSE: {len(events) - 1 - i} events after [DONE]")
            continue
        try:
            obj = json.loads(ev[6:])
        except ValueError:
            return [f"SSE event {i} is not JSON: {ev[:100]!r}"]
        if errored:
            problems.append("SSE: an event after the error event")
        if isinstance(obj, dict) and "error" in obj:
            errored = True
            if (why := error_shape(ev[6:])) is not None:
                problems.append("SSE error event: " + why)
        elif not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
            problems.append(f"SSE event {i} is no chunk: {ev[:100]!r}")
    if complete and (not events or events[-1] != DONE):
        problems.append(f"SSE does not end in [DONE]: {events[-1][:100] if events else b''!r}")
    return problems


def check(call: Call, status: int, headers: httpx.Headers, body: bytes, complete: bool) -> list[str]:
    problems, ctype = [], headers.get("content-type", "")
    if status >= 500 and status not in BY_DESIGN_5XX:
        problems.append(f"HTTP {status}")
    if 300 <= status < 400:  # Starlette's redirect of a path with its trailing slash toggled only
        if urlsplit(headers.get("location", "")).path.rstrip("/") != call.route.rstrip("/"):
            problems.append(f"HTTP {status} to {headers.get('location')!r}")
    elif status >= 400 and call.method != "HEAD":
        own = OWN_503.get(call.route) if status == 503 and call.method == "GET" else None
        if own is None and (why := error_shape(body)) is not None:
            problems.append(f"HTTP {status}: {why}")
        elif own is not None and not (isinstance(obj := _json(body), dict) and own in obj):
            problems.append(f"HTTP 503 from {call.route} without {own!r}: {body[:100]!r}")
    elif status == 200 and call.method == "POST":
        if ctype.startswith("text/event-stream"):
            problems += sse_problems(body, complete)
        elif complete and not (isinstance(obj := _json(body), dict) and isinstance(obj.get("choices"), list)):
            problems.append(f"HTTP 200 is no completion: {body[:200]!r}")
    return problems


def send(client: httpx.Client, call: Call) -> Outcome:
    """Send one call and check its answer; a hang-up leaves after the first SSE event, or after a
    short wait for a plain answer."""
    timeout = httpx.Timeout(ANSWER_S, read=0.2) if call.hangup else httpx.Timeout(ANSWER_S)
    try:
        with client.stream(
            call.method, call.path, content=call.body, headers=call.headers, timeout=timeout
        ) as r:
            ctype = r.headers.get("content-type", "")
            body, complete = b"", True
            for chunk in r.iter_raw():
                body += chunk
                if call.hangup and ctype.startswith("text/event-stream") and b"\n\n" in body:
                    complete = False
                    break
            status = r.status_code if complete else f"{r.status_code}, left"
            err = (obj := _json(body)) and isinstance(obj, dict) and obj.get("error")
            code = str(err.get("code") or err.get("type")) if isinstance(err, dict) else None
            return Outcome(call, status, check(call, r.status_code, r.headers, body, complete), code)
    except httpx.ReadTimeout:
        if call.hangup:
            return Outcome(call, "hangup")
        return Outcome(call, "timeout", [f"no answer in {ANSWER_S:g} s"])
    except httpx.TransportError as e:
        return Outcome(call, "broken", [f"transport error {type(e).__name__}: {e}"])
    except Exception as e:  # the fuzzer's own fault (a call httpx cannot send): shown, not fatal
        return Outcome(call, "unsent", [f"not sent: {type(e).__name__}: {e}"])


# ----- the run -------------------------------------------------------------------------------------
def fuzz(base: str, requests: int, seed_: int = 0, concurrency: int = 4, max_body: int = 4 * MiB) -> Report:
    """Send ``requests`` fuzzed calls to the router at ``base``; the report of their answers."""
    start = time.monotonic()
    with httpx.Client(base_url=base, timeout=30.0) as client:
        openapi = client.get("/openapi.json").json()
        report = Report(routes=frozenset(openapi["paths"]))
        model = client.get("/v1/models").json()["data"][0]["id"]
        strategy = calls(openapi, model, max_body)
        slots, dead = threading.Semaphore(concurrency), threading.Event()

        def done(future: Future[Outcome]) -> None:
            try:
                out = future.result()
                report.add(out)
                if out.status in ("timeout", "broken") and not _live(client):
                    dead.set()  # the rest would only wait for their timeouts
            finally:
                slots.release()

        with ThreadPoolExecutor(concurrency) as pool:
            submitted = 0
            for round_ in range(requests):  # a round hypothesis ends early is followed by another

                @seed(seed_ * 1000 + round_)
                @settings(
                    max_examples=requests - submitted, database=None, deadline=None, phases=[Phase.generate],
                    suppress_health_check=list(HealthCheck), derandomize=False,
                )  # fmt: skip
                @given(strategy)
                def one(call: Call) -> None:
                    nonlocal submitted
                    if dead.is_set():
                        return
                    slots.acquire()
                    future = pool.submit(send, client, call)
                    future.add_done_callback(done)
                    submitted += 1

                before = submitted
                one()
                if submitted >= requests or submitted == before:
                    break
        report.alive = _live(client)
    report.seconds = time.monotonic() - start
    return report


def _live(client: httpx.Client) -> bool:
    try:
        return client.get("/livez", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def metrics(url: str) -> dict[str, float]:
    """A Prometheus text page as {sample name with labels: value}."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def pool_leaks(base: str, workers: dict[str, str]) -> list[str]:
    """What is still held: the router's in-flight requests, each worker's used KV blocks and queued
    or running requests (``workers``: name -> HTTP URL), the colocated engine's blocks."""
    leaks = []
    router = metrics(base)
    if router.get("router_inflight_requests", 0):
        leaks.append(f"router: router_inflight_requests {router['router_inflight_requests']:g}")
    for name, url in sorted(workers.items()):
        m = metrics(url)
        for pool in ("decode", "prefill"):
            if f"{pool}_total_blocks" in m and m[f"{pool}_free_blocks"] != m[f"{pool}_total_blocks"]:
                leaks.append(
                    f"{name}: {m[f'{pool}_free_blocks']:g} of {m[f'{pool}_total_blocks']:g} blocks free"
                )
        busy = ("decode_running_requests", "decode_queued_requests", "prefill_waiting_requests",
                "prefill_running_requests", "prefill_transfers", "encoder_queue_images")  # fmt: skip
        leaks += [f"{name}: {k} {m[k]:g}" for k in busy if m.get(k)]
    debug = httpx.get(base + "/debug/requests", timeout=10).json()
    if debug.get("requests"):
        leaks.append(f"router: {len(debug['requests'])} live requests in /debug/requests")
    engine = debug.get("engine")  # colocated
    if engine and engine["free_blocks"] != engine["total_blocks"]:
        leaks.append(f"colocated engine: {engine['free_blocks']} of {engine['total_blocks']} blocks free")
    return leaks


def settle(check_: Callable[[], list[str]], timeout: float = 30.0) -> list[str]:
    """Poll ``check_`` until it finds nothing or ``timeout`` passes; what it found last."""
    deadline = time.monotonic() + timeout
    while (found := check_()) and time.monotonic() < deadline:
        time.sleep(0.25)
    return found


def worker_urls(log_dir: Path) -> dict[str, str]:
    """name -> HTTP URL of every worker that wrote a ready file in ``log_dir`` (``epd up``'s)."""
    out = {}
    for path in sorted(log_dir.glob("*.ready.json")):
        name = path.name.removesuffix(".ready.json")
        if name != "router" and "http" in (info := json.loads(path.read_text())):
            out[name] = info["http"]
    return out


def cluster_flags(colocated: bool) -> tuple[str, ...]:
    """``epd up`` flags of a small cluster for fuzzing on a shared CPU: small KV pools (a leak shows
    soon), as many admission slots as the fuzzer's concurrency (so the 503 path runs too, while
    the requests left by a hang-up are aborted), workers that report often (the leak check reads
    their gauges)."""
    common = ("--dtype", "float32", "--torch-threads", "1", "--router-arg=--max-model-len=512",
              "--router-arg=--max-images=4", "--router-arg=--heartbeat-timeout-s=15",
              "--router-arg=--max-inflight=4")  # fmt: skip
    if colocated:
        return (*common, "--colocated", "--router-arg=--num-blocks=256")
    return (
        *common, "--encoders", "1", "--prefills", "1", "--decodes", "1",
        "--prefill-arg=--num-blocks=256", "--decode-arg=--num-blocks=256",
        "--prefill-arg=--report-interval-s=0.2", "--decode-arg=--report-interval-s=0.2",
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--max-body-mib", type=int, default=4, help="largest raw body, MiB (at least 1)")
    p.add_argument("--url", help="a running router (default: start a tiny cluster)")
    p.add_argument(
        "--log-dir", type=Path, help="epd up's log dir: with --url, where its workers' ready files are; "
        "else where the started cluster logs (default: a temporary folder)",
    )  # fmt: skip
    p.add_argument("--colocated", action="store_true", help="start the router alone, with the whole model")
    args = p.parse_args(argv)
    if args.url:
        return _run(args, args.url.rstrip("/"), worker_urls(args.log_dir) if args.log_dir else {})
    from bench.servers import Server, serve
    from shared.checkpoint.tiny import cached_tiny_checkpoint

    os.environ.setdefault("DECODE_COMPILE_DECODE", "0")  # eager: the cluster starts in seconds
    os.environ.setdefault("ROUTER_COMPILE_DECODE", "0")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds: the cluster is stopped too
    with tempfile.TemporaryDirectory(prefix="fuzz-http-") as tmp:
        log_dir = args.log_dir or Path(tmp)
        ckpt = cached_tiny_checkpoint(Path(tempfile.gettempdir()) / "epd-fuzz-checkpoints")
        cmd = (sys.executable, "-m", "router.cli", "up", "--model", str(ckpt), "--base-port", "0",
               "--log-dir", str(log_dir), *cluster_flags(args.colocated))  # fmt: skip
        with serve(Server("epd", cmd, "cluster ready", 300), log_dir) as url:
            return _run(args, url.removesuffix("/v1"), worker_urls(log_dir))


def _run(args: argparse.Namespace, base: str, workers: dict[str, str]) -> int:
    print(f"fuzzing {base} (workers: {', '.join(workers) or 'none'}), seed {args.seed}", flush=True)
    report = fuzz(base, args.requests, args.seed, args.concurrency, max(1, args.max_body_mib) * MiB)
    report.leaks = settle(lambda: pool_leaks(base, workers)) if report.alive else []
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
