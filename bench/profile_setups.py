"""``python -m bench.profile_setups``: where the CPU goes when a setup serves ``bench.compare``'s load.

    python -m bench.profile_setups --model shared/assets/demo --num-requests 64 --concurrency 8 \\
        --out-dir /tmp/profile    # and any other bench.compare flag (--setups, --cluster-flags, ...)

Per setup (one at a time, as ``bench.compare`` starts them): warm up, then during one closed-loop
run measure every server process's CPU seconds (``/proc/PID/stat``, user + system) and the load
generator's own, and sample each server process with py-spy (``--py-spy``; off with ``--no-py-spy``).
It prints, per setup, CPU milliseconds per request by process and, per process, the functions that
hold the most samples: by self time (the innermost frame) and inclusive time (project code only).
On a machine with fewer cores than busy processes, CPU per request is what bounds throughput,
so the difference between two setups' totals is their difference in capacity.

Files in ``--out-dir``: ``<setup>/*.log`` (the servers), ``<setup>-<process>.txt`` (py-spy's raw
collapsed stacks; feed them to any flame-graph tool) and ``profile.json`` (every figure printed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import httpx

from bench.compare import CompareConfig, machine, parse_args
from bench.servers import serve
from shared.loadgen import run

TICK = os.sysconf("SC_CLK_TCK")


def server_processes(marker: str) -> dict[int, str]:
    """pid -> a role name, for every process whose command line mentions ``marker`` (the log dir)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv if a]
        if any(marker in w for w in words) and int(entry.name) != os.getpid():
            module = words[words.index("-m") + 1] if "-m" in words else words[0]
            ready = words[words.index("--ready-file") + 1] if "--ready-file" in words[:-1] else ""
            name = Path(ready).name.split(".")[0]
            found[int(entry.name)] = name or ("supervisor" if "up" in words else module)
    return found


def engine_counters(log_dir: Path, roles: Sequence[str]) -> dict[str, dict[str, float]]:
    """Engine steps, their seconds and the tokens they sampled so far: decode workers' metrics, or
    the colocated engine's ``/debug/requests``."""
    out = {}
    for role in roles:
        ready = log_dir / f"{role}.ready.json"
        if not (role.startswith("decode") or role == "router") or not ready.exists():
            continue
        http = json.loads(ready.read_text())["http"]
        if role == "router":
            engine = httpx.get(http + "/debug/requests", timeout=10).json().get("engine", {})
            if "steps" in engine:
                out[role] = {
                    k: engine[f"step_{k}" if k != "steps" else k] for k in ("steps", "seconds", "tokens")
                }
            continue
        values = {}
        for line in httpx.get(http + "/metrics", timeout=10).text.splitlines():
            if line.startswith("#"):
                continue
            name, _, value = line.partition(" ")
            values[name] = float(value) if value else 0.0
        out[role] = {
            "steps": values.get("decode_step_seconds_count", 0.0),
            "seconds": values.get("decode_step_seconds_sum", 0.0),
            "tokens": values.get("decode_tokens_total", 0.0),
        }
    return out


def step_figures(before: dict, after: dict) -> dict[str, dict[str, float]]:
    figures = {}
    for role, end in after.items():
        d = {k: end[k] - before.get(role, {}).get(k, 0.0) for k in end}
        if d["steps"]:
            figures[role] = {
                "steps": int(d["steps"]),
                "tokens_per_step": round(d["tokens"] / d["steps"], 2),
                "ms_per_step": round(1000 * d["seconds"] / d["steps"], 3),
            }
    return figures


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


PROJECT = ("shared/", "services/", "router/")


def _function(frame: str) -> str:
    """``name (path/file.py:line)`` -> ``name (path/file.py)``: lines dropped to pool samples."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rstrip(')').rsplit(':', 1)[0]})"


# (category, path prefixes or names); a sample goes to the first category its innermost frames match
CATEGORIES = (
    (
        "waiting",
        (
            "selectors.py",
            "zmq/sugar/poll.py",
            "zmq/utils/garbage.py",
            "threading.py",
            "queue.py",
            "concurrent/futures/thread.py",
        ),
    ),
    ("model and engine", ("shared/models/", "shared/engine/", "torch/")),
    ("images: decode, preprocess", ("shared/multimodal/", "PIL/", "numpy/")),
    ("messaging: ZMQ, codec, KV transfer", ("shared/wire/", "shared/transfer/", "zmq/", "msgpack/")),
    (
        "HTTP, SSE, JSON",
        (
            "uvicorn/",
            "starlette/",
            "fastapi/",
            "h11/",
            "asyncio/",
            "anyio/",
            "httpx/",
            "httpcore/",
            "json/",
            "pydantic",
            "router/api/",
            "router/responses.py",
        ),
    ),
    ("router: prepare, orchestrate, detokenize", ("router/", "tokenizers/", "transformers/")),
    ("service loops", ("services/",)),
)


def category(frames: list[str]) -> str:
    for frame in reversed(frames):
        where = frame.split(" (", 1)[1]
        for name, prefixes in CATEGORIES:
            if any(where.startswith(p) or f"/{p}" in where for p in prefixes):
                return name
    return "other"


def summarize(raw: Path, top: int) -> dict:
    """Top functions of py-spy's raw output by self samples, and by inclusive samples in project code."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit() or not stack:
            continue
        n, frames = int(count), [_function(f) for f in stack.split(";")]
        total += n
        own[frames[-1]] += n
        kinds[category(frames)] += n
        for f in set(frames):
            if f.split(" (", 1)[1].startswith(PROJECT):
                inclusive[f] += n

    def pct(c: Counter[str]) -> list[tuple[str, float]]:
        return [(f, round(100 * k / max(total, 1), 1)) for f, k in c.most_common(top)]

    busy = total - kinds["waiting"]
    shares = {k: round(v / max(busy, 1), 3) for k, v in kinds.most_common() if k != "waiting"}
    return {"samples": total, "busy_shares": shares, "self": pct(own), "inclusive": pct(inclusive)}


def profile(cfg: CompareConfig, name: str, out_dir: Path, py_spy: str | None, rate: int, top: int) -> dict:
    log_dir = out_dir / name
    with serve(cfg.server(name, log_dir), log_dir) as url:
        run(replace(cfg, num_requests=max(cfg.warmup, 1)).load(url, concurrency=cfg.concurrency, warmup=0))
        procs = server_processes(str(log_dir))
        spies = {
            pid: subprocess.Popen(
                [
                    py_spy,
                    "record",
                    "-p",
                    str(pid),
                    "-r",
                    str(rate),
                    "-f",
                    "raw",
                    "-o",
                    str(out_dir / f"{name}-{role}.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            for pid, role in procs.items()
            if py_spy and role != "supervisor"
        }
        time.sleep(1.0 if spies else 0.0)  # py-spy attaches
        steps_before = engine_counters(log_dir, list(procs.values()))
        before = {pid: cpu_seconds(pid) for pid in procs}
        mine, wall = self_cpu(), time.monotonic()
        report = run(cfg.load(url, concurrency=cfg.concurrency, warmup=0))
        wall, mine = time.monotonic() - wall, self_cpu() - mine
        after = {pid: cpu_seconds(pid) for pid in procs}
        steps = step_figures(steps_before, engine_counters(log_dir, list(procs.values())))
        for spy in spies.values():
            spy.send_signal(signal.SIGINT)
        for spy in spies.values():
            spy.wait(30)
    done = max(report["runs"][0]["completed"], 1)
    cpu = {role: round(1000 * (after[pid] - before[pid]) / done, 2) for pid, role in procs.items()}
    cpu["load generator"] = round(1000 * mine / done, 2)
    stacks = {
        role: summarize(out_dir / f"{name}-{role}.txt", top)
        for role in procs.values()
        if (out_dir / f"{name}-{role}.txt").exists()
    }
    by_category: Counter[str] = Counter()
    for role, st in stacks.items():
        for kind, share in st["busy_shares"].items():
            by_category[kind] += share * cpu[role]
    figures = report["runs"][0]
    return {
        "engine_steps": steps,
        "cpu_ms_per_request_by_category": {k: round(v, 2) for k, v in by_category.most_common()},
        "wall_s": round(wall, 2),
        "completed": figures["completed"],
        "request_throughput": figures["request_throughput"],
        "cpu_ms_per_request": cpu,
        "server_cpu_ms_per_request": round(sum(v for k, v in cpu.items() if k != "load generator"), 2),
        "cpu_busy_fraction": round(sum(cpu.values()) * done / 1000 / wall / (os.cpu_count() or 1), 3),
        "stacks": stacks,
    }


def render(results: dict) -> str:
    lines = []
    for name, r in results.items():
        lines.append(
            f"\n{name}: {r['completed']} requests in {r['wall_s']} s ({r['request_throughput']:.2f} req/s); "
            f"server CPU {r['server_cpu_ms_per_request']} ms per request; cores busy {r['cpu_busy_fraction']:.0%}"
        )
        for role, ms in sorted(r["cpu_ms_per_request"].items(), key=lambda kv: -kv[1]):
            lines.append(f"  {role:16s} {ms:8.2f} ms CPU / request")
        for role, st in r["engine_steps"].items():
            lines.append(
                f"  {role} engine: {st['steps']} steps, {st['tokens_per_step']} tokens per step, "
                f"{st['ms_per_step']} ms per step"
            )
        if r["cpu_ms_per_request_by_category"]:
            lines.append("  server CPU by kind of work (py-spy samples scaled to each process's CPU time):")
        for kind, ms in r["cpu_ms_per_request_by_category"].items():
            lines.append(f"    {kind:42s} {ms:8.2f} ms / request")
        for role, s in r["stacks"].items():
            lines.append(
                f"  {role}: {s['samples']} samples; self: " + "; ".join(f"{f} {p}%" for f, p in s["self"][:6])
            )
            lines.append(
                f"  {' ' * len(role)}  inclusive: " + "; ".join(f"{f} {p}%" for f, p in s["inclusive"][:8])
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.profile_setups",
        description=__doc__.split("\n")[0].split(": ", 1)[1],
        epilog="every other flag is bench.compare's (model, setups, workload, --cluster-flags, ...)",
    )
    p.add_argument(
        "--py-spy", default=shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    )
    p.add_argument("--no-py-spy", action="store_true", help="CPU time per process only")
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=15, help="functions listed per process")
    p.add_argument("--out-dir", type=Path, default=Path("profile"))
    a, rest = p.parse_known_args(argv)
    cfg = replace(parse_args(["--setups", "cluster,colocated", *rest]), progress=False)
    a.out_dir.mkdir(parents=True, exist_ok=True)
    spy = None if a.no_py_spy else a.py_spy
    results = {name: profile(cfg, name, a.out_dir, spy, a.rate, a.top) for name in cfg.setups}
    print(render(results))
    (a.out_dir / "profile.json").write_text(
        json.dumps({"environment": machine(), "setups": results}, indent=1)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
