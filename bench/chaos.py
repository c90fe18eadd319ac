"""``python -m bench.chaos``: workers are killed or frozen under load, and every request is still
answered, greedy answers do not change, latency stays within a bound, no KV block leaks (issue 17).

Real processes on loopback (``shared.supervisor``), the bundled demo model: two encoders, two
prefill and two decode workers registering with one router (``--report-to``); the router takes a
worker as gone once its load reports stop for ``--heartbeat-timeout-s`` (2 s here). The load is a
closed loop of streamed greedy chat requests drawn in turn from a fixed set of ``--distinct``
bodies: 0-2 of ``shared.loadgen``'s synthetic images and one of the demo model's questions,
temperature 0, at most ``--max-tokens``, EOS honoured (a text is the model's whole answer, which
its decisive logits make reproducible; tokens past EOS would be a weaker reference). The encoders'
embedding cache and prefill's prefix cache are off unless ``--caches``: repeated bodies then cost
the same work every time, so a worker hit by an event holds real work.

1. Undisturbed: every body once. Its text and E2E are the reference; their p99 the latency bar.
2. One load segment per event, each event on a worker that holds work (a decode worker with a
   stream under way, a prefill worker with prompts not yet answered, an encoder with images):
   ``kill``, for each kind and each of ``--kills`` moments (after 1/K .. K/K of 2 x concurrency
   requests of the segment completed: from the ramp to the steady state): SIGKILL, and a
   replacement starts (recovered: the router lists it); ``freeze``, for each kind: SIGSTOP for
   ``--freeze-factor`` x the heartbeat timeout, then SIGCONT (recovered: listed live again). The
   segment runs on until ``concurrency`` more requests completed after the recovery; once idle,
   every prefill and decode pool must come back to all blocks free (``*_free_blocks`` ==
   ``*_total_blocks`` on each worker's /metrics, polled with a deadline).

Per event, over the requests of its segment: answered % (a complete stream or a clean error: an
HTTP error status or an error event), succeeded %, the time from the event to the first success of
a request sent after it, the worst E2E of the requests in flight at the event against the
undisturbed p99 + ``--bound-s``, texts unlike the undisturbed ones, the router's retries and
migrations, the pools. Acceptance, PASS/FAIL each (exit 1 on a FAIL): kill -> 100% succeed, texts
identical; freeze -> 100% answered, >= 99% succeed, every text that came identical; no E2E above
the undisturbed p99 + bound; every pool free after each event. ``tests/chaos`` runs two events
of the same scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import json
import re
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np

from bench.elastic import JSON, Scenario, counter, free_port, known_workers, worker
from shared.assets import DEMO_MODEL_DIR
from shared.loadgen.sse import parse_line
from shared.loadgen.workload import data_url, synth_image
from shared.supervisor import ServiceSpec, Supervisor

KINDS = ("encoder", "prefill", "decode")
PORTS = {
    "encoder": ("--port", "0", "--http-port", "0"),
    "prefill": ("--port", "0", "--inbox-port", "0", "--http-port", "0"),
    "decode": ("--port", "0", "--kv-port", "0", "--http-port", "0"),
}
NO_CACHE = {"encoder": ("--cache-bytes", "0"), "prefill": ("--no-enable-prefix-cache",), "decode": ()}
POOLS = ("prefill", "decode")  # kinds with a KV pool: <kind>_free_blocks / <kind>_total_blocks
QUESTIONS = (
    ("Hello!", "What can you do?", "What is in the image?"),
    (
        "What is in the image?",
        "How many shapes are there?",
        "Where is the circle?",
        "What colour is the square?",
    ),
    ("What is in the second image?", "Which image has the red circle?", "Describe the image."),
)  # by number of images
SIZES = ((64, 64), (160, 96), (224, 224))


@dataclass
class Chaos:
    model: Path = DEMO_MODEL_DIR
    distinct: int = 48  # request bodies; each is sent once undisturbed, then in turn
    concurrency: int = 6
    max_tokens: int = 24
    kills: int = 5  # SIGKILL moments per kind
    freeze: bool = True  # one SIGSTOP per kind
    kinds: tuple[str, ...] = KINDS
    heartbeat_timeout_s: float = 2.0
    freeze_factor: float = 2.0  # SIGSTOP lasts this many heartbeat timeouts
    bound_s: float = 5.0  # E2E may exceed the undisturbed p99 by this much
    idle_deadline_s: float = 30.0  # for the pools to come back once the load stops
    caches: bool = False
    decode_flags: tuple[str, ...] = ("--no-compile-decode",)  # a replacement starts in seconds
    log_dir: Path | None = None
    timeout_s: float = 120.0  # one request's
    seed: int = 0


@dataclass(frozen=True)
class Event:
    kind: str  # encoder, prefill, decode
    action: str  # kill, freeze
    moment: float  # fires once this fraction of 2 x concurrency requests of its segment completed


def plan(ch: Chaos) -> list[Event]:
    out = [Event(k, "kill", (m + 1) / ch.kills) for k in ch.kinds for m in range(ch.kills)]
    return out + ([Event(k, "freeze", 0.5) for k in ch.kinds] if ch.freeze else [])


class Outcome(enum.StrEnum):
    OK = "ok"  # the whole answer and [DONE]
    ERROR = "error"  # answered with an error: an HTTP error status or an error event
    LOST = "lost"  # no answer: timeout, broken connection, a stream cut short


@dataclass
class Result:
    seq: int  # order of sending over the whole run (X-Request-Id chaos-<seq>)
    body: int
    start: float  # seconds since the run began
    end: float = 0.0
    outcome: Outcome = Outcome.LOST
    text: str = ""
    error: str = ""

    @property
    def e2e(self) -> float:
        return self.end - self.start


def request_set(n: int, max_tokens: int, seed: int) -> list[dict]:
    rng = np.random.default_rng([seed, 17])
    bodies = []
    for i in range(n):
        k = int(rng.choice(3, p=(0.2, 0.5, 0.3)))
        images = [
            {"type": "image_url", "image_url": {"url": data_url(synth_image(2 * i + j, SIZES[int(rng.integers(3))], seed), "png")}}
            for j in range(k)
        ]  # fmt: skip
        text = QUESTIONS[k][int(rng.integers(len(QUESTIONS[k])))]
        bodies.append({
            "messages": [{"role": "user", "content": [*images, {"type": "text", "text": text}]}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True,
        })  # fmt: skip
    return bodies


async def ask(
    client: httpx.AsyncClient, url: str, payload: bytes, res: Result, t0: float, timeout: float
) -> None:
    headers = {**JSON, "X-Request-Id": f"chaos-{res.seq}"}
    try:
        async with (
            asyncio.timeout(timeout),
            client.stream("POST", url, content=payload, headers=headers) as resp,
        ):
            if resp.status_code != 200:
                res.outcome, res.error = (
                    Outcome.ERROR,
                    f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}",
                )
                return
            async for line in resp.aiter_lines():
                if (chunk := parse_line(line)) is None:
                    continue
                if chunk.error is not None:
                    res.outcome, res.error = Outcome.ERROR, chunk.error[:200]
                elif chunk.done:
                    res.outcome = Outcome.ERROR if res.error else Outcome.OK
                    break
                res.text += chunk.content
            if res.outcome is Outcome.LOST:
                res.error = "the stream ended without [DONE]"
    except TimeoutError:
        res.outcome, res.error = Outcome.LOST, f"timeout ({timeout:g} s)"
    except httpx.HTTPError as e:
        res.outcome, res.error = Outcome.LOST, f"{type(e).__name__}: {e}"[:200]
    finally:
        res.end = time.monotonic() - t0


class Load:
    """A closed loop of ``concurrency`` senders over the request set, run segment by segment."""

    def __init__(self, client: httpx.AsyncClient, url: str, bodies: list[bytes], ch: Chaos) -> None:
        self.client, self.url, self.bodies, self.ch = client, url, bodies, ch
        self.t0 = time.monotonic()
        self.sent = 0  # requests sent, over all segments
        self.next_body = 0
        self.running: dict[int, Result] = {}
        self.done: list[Result] = []

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def completed(self, n: int) -> None:
        while len(self.done) < n:
            await asyncio.sleep(0.01)

    async def segment(self, control: asyncio.Future | None = None, count: int | None = None) -> list[Result]:
        """Send until ``control`` is done (or ``count`` requests were sent); the requests of the
        segment, once all finished."""
        first, start = len(self.done), self.sent

        async def sender() -> None:
            while not (control is not None and control.done()) and (
                count is None or self.sent - start < count
            ):
                res = Result(self.sent, self.next_body, self.now())
                self.sent, self.next_body = self.sent + 1, (self.next_body + 1) % len(self.bodies)
                self.running[res.seq] = res
                await ask(self.client, self.url, self.bodies[res.body], res, self.t0, self.ch.timeout_s)
                del self.running[res.seq]
                self.done.append(res)

        await asyncio.gather(*(sender() for _ in range(self.ch.concurrency)))
        if control is not None:
            await control  # its exception, if any
        return self.done[first:]


class Cluster:
    def __init__(self, ch: Chaos, log_dir: Path) -> None:
        self.ch, self.log_dir = ch, log_dir
        self.inbox = f"tcp://127.0.0.1:{free_port()}"
        self.sc = Scenario(model=ch.model, decode_flags=ch.decode_flags)
        self.serial = dict.fromkeys(KINDS, 2)
        router = ServiceSpec("router", "router", (
            "--model", str(ch.model), "--host", "127.0.0.1", "--port", "0", "--inbox-host", "127.0.0.1",
            "--inbox-port", self.inbox.rsplit(":", 1)[1], "--heartbeat-timeout-s", str(ch.heartbeat_timeout_s),
        ))  # fmt: skip
        self.sup = Supervisor([*(self.spec(f"{k}-{i}") for k in KINDS for i in range(2)), router], log_dir)

    def spec(self, name: str) -> ServiceSpec:
        kind = name.split("-")[0]
        extra = () if self.ch.caches else NO_CACHE[kind]
        return worker(self.sc, name, f"services.{kind}", [self.inbox], *PORTS[kind], *extra)

    def start(self) -> None:
        self.http = self.sup.start(timeout=600)["router"]["http"]
        self.wait_listed([n for n in self.sup.children if n != "router"])

    def names(self, kind: str) -> list[str]:
        return [n for n in self.sup.children if n.startswith(f"{kind}-")]

    def address(self, name: str) -> str:
        info = self.sup.children[name].info or {}
        return info.get("zmq") or info["kv"]

    def wait_listed(self, names: list[str], timeout: float = 60.0) -> None:
        """Until the router lists every one of ``names`` as live."""
        deadline = time.monotonic() + timeout
        while not {self.address(n) for n in names} <= known_workers(self.http):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{names} not listed live by the router after {timeout:g} s")
            time.sleep(0.05)

    def signal(self, name: str, sig: signal.Signals) -> None:
        self.sup.children[name].proc.send_signal(sig)

    def replace(self, dead: str) -> str:
        """Reap a killed worker and start another of its kind; its name once the router lists it."""
        self.sup.drain(dead, timeout=5)
        kind = dead.split("-")[0]
        name = f"{kind}-{self.serial[kind]}"
        self.serial[kind] += 1
        self.sup.add(self.spec(name))
        self.wait_listed([name])
        return name

    async def busy(
        self, client: httpx.AsyncClient, kind: str, wait_s: float = 10.0
    ) -> tuple[str, int, list[int]]:
        """The worker of ``kind`` that holds the most work (polled for up to ``wait_s``, else the
        first): its name, how much (requests; images for an encoder), which requests (seq; not
        known for an encoder)."""
        by_address = {self.address(n): n for n in self.names(kind)}
        deadline = time.monotonic() + wait_s
        while True:
            snap = (await client.get(f"{self.http}/debug/requests")).json()
            held: dict[str, list[int]] = {a: [] for a in by_address}
            images = {e.get("zmq"): e.get("inflight", 0) for e in snap.get("encoders", [])}
            for r in snap.get("requests", []):
                tokens, address = r.get("tokens", 0), r.get(kind)
                # a decode worker holds a stream once it sent a token (the first comes from prefill)
                if address in held and (tokens >= 2 if kind == "decode" else tokens == 0):
                    m = re.search(r"chaos-(\d+)", r.get("id", ""))
                    held[address].append(int(m.group(1)) if m else -1)
            work = {a: images.get(a, 0) if kind == "encoder" else len(held[a]) for a in by_address}
            address = max(work, key=lambda a: work[a])
            if work[address] or time.monotonic() > deadline:
                return by_address[address], work[address], sorted(held[address])
            await asyncio.sleep(0.02)

    def pools(self) -> dict[str, tuple[float, float]]:
        """(free, total) blocks of every prefill and decode worker's pool, polled until all are
        free or the idle deadline passes."""
        deadline = time.monotonic() + self.ch.idle_deadline_s
        while True:
            out = {}
            for name in (n for k in POOLS for n in self.names(k)):
                http, kind = (self.sup.children[name].info or {})["http"], name.split("-")[0]
                out[name] = (counter(http, f"{kind}_free_blocks"), counter(http, f"{kind}_total_blocks"))
            if all(f == t for f, t in out.values()) or time.monotonic() > deadline:
                return out
            time.sleep(0.25)


@dataclass
class Report:
    """One event and the segment of load around it."""

    event: Event
    victim: str
    held: int  # requests (images for an encoder) the victim held at the event
    held_requests: list[int]  # which (seq); not known for an encoder
    in_flight: list[int]  # requests (seq) in flight at the event
    at_s: float  # since the run began
    recovered_s: float  # event -> the replacement listed (kill) / the victim listed live again (freeze)
    replacement: str = ""
    requests: int = 0
    answered: int = 0
    succeeded: int = 0
    first_success_s: float | None = None  # event -> first success of a request sent after it
    worst_in_flight_e2e_s: float = 0.0
    worst_e2e_s: float = 0.0
    mismatches: list[int] = field(default_factory=list)  # requests (seq) whose text differs
    errors: list[str] = field(default_factory=list)  # seq: outcome: message, of the failures
    pools: dict[str, tuple[float, float]] = field(default_factory=dict)  # worker -> (free, total)
    retries: float = 0.0  # the router's, during the segment: resent before the first token
    migrations: float = 0.0  # resent with the tokens already streamed

    @property
    def pools_free(self) -> bool:
        return all(f == t for f, t in self.pools.values())


@dataclass
class Summary:
    undisturbed: list[Result]
    p99_s: float
    reports: list[Report]
    segments: list[list[Result]]
    checks: list[tuple[str, bool]] = field(default_factory=list)
    duration_s: float = 0.0


async def event(
    cl: Cluster, load: Load, client: httpx.AsyncClient, ev: Event, ref: dict[int, Result]
) -> tuple[Report, list[Result]]:
    ch = cl.ch
    marks: dict = {}

    async def control() -> None:
        await load.completed(len(load.done) + max(1, round(ev.moment * 2 * ch.concurrency)))
        victim, held, which = await cl.busy(client, ev.kind)
        in_flight = sorted(load.running)
        marks.update(victim=victim, held=held, held_requests=which, in_flight=in_flight, at_s=load.now())
        if ev.action == "kill":
            cl.signal(victim, signal.SIGKILL)
            marks["replacement"] = await asyncio.to_thread(cl.replace, victim)
        else:
            cl.signal(victim, signal.SIGSTOP)
            try:
                await asyncio.sleep(ch.freeze_factor * ch.heartbeat_timeout_s)
            finally:
                cl.signal(victim, signal.SIGCONT)
            await asyncio.to_thread(cl.wait_listed, [victim])
        marks["recovered_s"] = load.now() - marks["at_s"]
        await load.completed(len(load.done) + ch.concurrency)

    counts = lambda: [counter(cl.http, f"router_{c}_total") for c in ("retries", "migrations")]  # noqa: E731
    before = await asyncio.to_thread(counts)
    results = await load.segment(asyncio.ensure_future(control()))
    rep = Report(ev, **marks)
    at, ok = rep.at_s, [r for r in results if r.outcome is Outcome.OK]
    rep.requests, rep.succeeded = len(results), len(ok)
    rep.answered = sum(r.outcome is not Outcome.LOST for r in results)
    rep.first_success_s = min((r.end - at for r in ok if r.start >= at), default=None)
    rep.worst_in_flight_e2e_s = max((r.e2e for r in results if r.seq in rep.in_flight), default=0.0)
    rep.worst_e2e_s = max(r.e2e for r in results)
    rep.mismatches = [r.seq for r in ok if r.text != ref[r.body].text]
    rep.errors = [f"{r.seq}: {r.outcome}: {r.error}" for r in results if r.outcome is not Outcome.OK]
    rep.pools = await asyncio.to_thread(cl.pools)
    rep.retries, rep.migrations = (
        b - a for a, b in zip(before, await asyncio.to_thread(counts), strict=True)
    )
    return rep, results


async def drive(cl: Cluster, events: list[Event]) -> Summary:
    ch = cl.ch
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=ch.timeout_s, limits=limits) as client:
        model = (await client.get(f"{cl.http}/v1/models")).json()["data"][0]["id"]
        bodies = [
            json.dumps({**b, "model": model}).encode()
            for b in request_set(ch.distinct, ch.max_tokens, ch.seed)
        ]
        load = Load(client, f"{cl.http}/v1/chat/completions", bodies, ch)
        await load.segment(count=ch.concurrency)  # warm-up: connections, first forwards
        load.next_body = 0
        calm = await load.segment(count=ch.distinct)
        ok = [r.e2e for r in calm if r.outcome is Outcome.OK]
        out = Summary(calm, float(np.percentile(ok, 99)) if ok else 0.0, [], [])
        ref = {r.body: r for r in calm}
        for ev in events:
            rep, results = await event(cl, load, client, ev, ref)
            out.reports.append(rep)
            out.segments.append(results)
            print(row(rep, out.p99_s + ch.bound_s), file=sys.stderr, flush=True)  # progress
        out.duration_s = load.now()
    out.checks = acceptance(out, ch)
    return out


def acceptance(out: Summary, ch: Chaos) -> list[tuple[str, bool]]:
    kills = [r for r in out.reports if r.event.action == "kill"]
    freezes = [r for r in out.reports if r.event.action == "freeze"]
    n = lambda reps, what: sum(getattr(r, what) for r in reps)  # noqa: E731
    bar = out.p99_s + ch.bound_s
    checks = [("undisturbed: every request succeeded", all(r.outcome is Outcome.OK for r in out.undisturbed))]
    if kills:
        checks += [
            ("SIGKILL: 100% of requests succeed", n(kills, "succeeded") == n(kills, "requests")),
            ("SIGKILL: greedy texts identical to the undisturbed run", not any(r.mismatches for r in kills)),
        ]
    if freezes:
        checks += [
            ("SIGSTOP: 100% of requests answered", n(freezes, "answered") == n(freezes, "requests")),
            ("SIGSTOP: >= 99% of requests succeed", n(freezes, "succeeded") >= 0.99 * n(freezes, "requests")),
            (
                "SIGSTOP: greedy texts identical to the undisturbed run",
                not any(r.mismatches for r in freezes),
            ),
        ]
    worst = max((r.worst_e2e_s for r in out.reports), default=0.0)
    checks += [
        (f"every E2E <= undisturbed p99 + {ch.bound_s:g} s ({worst:.2f} <= {bar:.2f} s)", worst <= bar),
        ("every KV pool all free once idle after each event", all(r.pools_free for r in out.reports)),
    ]
    return checks


HEADER = (
    f"{'event':<22} {'held':>4} {'in fl':>5} {'recov s':>7} {'retry':>5} {'migr':>4} {'reqs':>4} "
    f"{'answ %':>6} {'ok %':>6} {'1st ok s':>8} {'worst in-fl E2E s':>17} {'texts differ':>12}  pools free"
)


def row(r: Report, bar: float) -> str:
    pct = lambda k: 100.0 * k / max(1, r.requests)  # noqa: E731
    first = "-" if r.first_success_s is None else f"{r.first_success_s:.2f}"
    worst = f"{r.worst_in_flight_e2e_s:.2f} {'<=' if r.worst_in_flight_e2e_s <= bar else '>'} {bar:.2f}"
    leaks = ", ".join(f"{w} {f:g}/{t:g}" for w, (f, t) in r.pools.items() if f != t)
    name = f"{r.event.action} {r.victim}@{r.event.moment:.1f}"
    return (
        f"{name:<22} {r.held:>4} {len(r.in_flight):>5} {r.recovered_s:>7.2f} {r.retries:>5.0f} "
        f"{r.migrations:>4.0f} {r.requests:>4} {pct(r.answered):>6.1f} {pct(r.succeeded):>6.1f} {first:>8} "
        f"{worst:>17} {len(r.mismatches):>12}  {'NO: ' + leaks if leaks else 'yes'}"
    )


def summary(out: Summary, ch: Chaos) -> str:
    calm = [r.e2e for r in out.undisturbed]
    lines = [
        f"undisturbed: {len(calm)} requests, E2E median {np.median(calm):.2f} s, p99 {out.p99_s:.2f} s, "
        f"max {max(calm):.2f} s",
        HEADER,
        *(row(r, out.p99_s + ch.bound_s) for r in out.reports),
        *(f"  {r.event.action} {r.victim}: {e}" for r in out.reports for e in r.errors[:5]),
        f"{len(out.undisturbed) + sum(map(len, out.segments))} streamed requests in {out.duration_s:.0f} s",
        *(f"{'PASS' if ok else 'FAIL'}: {name}" for name, ok in out.checks),
    ]
    return "\n".join(lines)


def run(ch: Chaos, events: list[Event] | None = None) -> Summary:
    cl = Cluster(ch, ch.log_dir or Path(tempfile.mkdtemp(prefix="chaos-")))
    cl.start()
    try:
        return asyncio.run(drive(cl, plan(ch) if events is None else events))
    finally:
        cl.sup.stop(timeout=30)


def to_json(out: Summary, ch: Chaos) -> dict:
    reports = [{**asdict(r), "pools_free": r.pools_free, "results": [asdict(x) for x in seg]}
               for r, seg in zip(out.reports, out.segments, strict=True)]  # fmt: skip
    return {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(ch).items()},
        "undisturbed": {"p99_s": out.p99_s, "results": [asdict(x) for x in out.undisturbed]},
        "events": reports,
        "checks": [{"check": name, "pass": ok} for name, ok in out.checks],
        "duration_s": out.duration_s,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=(__doc__ or "").split("\n\n")[0])
    d = Chaos()
    p.add_argument("--model", type=Path, default=d.model)
    p.add_argument(
        "--distinct", type=int, default=d.distinct, help="request bodies (each sent once undisturbed)"
    )
    p.add_argument("--concurrency", type=int, default=d.concurrency)
    p.add_argument("--max-tokens", type=int, default=d.max_tokens)
    p.add_argument("--kills", type=int, default=d.kills, help="SIGKILL moments per worker kind")
    p.add_argument(
        "--freeze", action=argparse.BooleanOptionalAction, default=d.freeze, help="one SIGSTOP per kind"
    )
    p.add_argument("--kinds", default=",".join(d.kinds), help="worker kinds hit, of encoder,prefill,decode")
    p.add_argument("--heartbeat-timeout-s", type=float, default=d.heartbeat_timeout_s)
    p.add_argument("--freeze-factor", type=float, default=d.freeze_factor)
    p.add_argument("--bound-s", type=float, default=d.bound_s)
    p.add_argument("--caches", action="store_true", help="keep the encoder and prefix caches on")
    p.add_argument("--compile-decode", action="store_true", help="decode workers compile their step")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--log-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None, help="JSON results")
    a = p.parse_args(argv)
    kinds = tuple(k for k in a.kinds.split(",") if k)
    if set(kinds) - set(KINDS):
        p.error(f"--kinds: of {','.join(KINDS)}")
    ch = Chaos(
        a.model, a.distinct, a.concurrency, a.max_tokens, a.kills, a.freeze, kinds, a.heartbeat_timeout_s,
        a.freeze_factor, a.bound_s, caches=a.caches, decode_flags=() if a.compile_decode else d.decode_flags,
        log_dir=a.log_dir, seed=a.seed,
    )  # fmt: skip
    print(HEADER, file=sys.stderr, flush=True)
    out = run(ch)
    print(summary(out, ch))
    if a.out:
        a.out.write_text(json.dumps(to_json(out, ch), indent=1))
    return 0 if all(ok for _, ok in out.checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
