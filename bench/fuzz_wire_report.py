"""What the wire fuzzer (``bench.fuzz_wire``) counts and checks, and how it prints it.

The checks read the cluster's own evidence: each worker's ``/metrics`` (malformed messages,
oversized drops, internal errors, free KV blocks) and ``/health``, the services' logs (tracebacks)
and the launcher's output (a service that exited and was restarted).
"""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORKERS = ("encoder", "prefill", "decode")


def ready(log_dir: Path, service: str) -> dict[str, Any]:
    return json.loads((log_dir / f"{service}-0.ready.json").read_text())


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


def metric(body: str, key: str) -> float:
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in body.splitlines() if ln.startswith(key + " "))


def snapshot(log_dir: Path) -> dict[str, float]:
    """The counters the checks compare, per worker, and the crash traces in the logs."""
    out: dict[str, float] = {
        "tracebacks": sum(p.read_text(errors="replace").count("Traceback") for p in log_dir.glob("*.log")),
        "exits": sum(p.read_text(errors="replace").count(" exited with ") for p in log_dir.glob("*.out")),
    }
    for svc in WORKERS:
        body = fetch(ready(log_dir, svc)["http"] + "/metrics")
        for name in ("malformed_messages", "oversized_drops", "protocol_drops"):
            out[f"{svc}_{name}"] = metric(body, f"{svc}_{name}_total")
        out[f"{svc}_internal"] = metric(body, f'{svc}_errors_total{{kind="internal"}}')
        for name in ("free_blocks", "total_blocks"):
            out[f"{svc}_{name}"] = metric(body, f"{svc}_{name}")
    return out


@dataclass
class Report:
    sent: Counter[tuple[str, str]] = field(default_factory=Counter)  # (message type, mutation)
    replies: Counter[str] = field(default_factory=Counter)  # by message type
    oversized: Counter[str] = field(default_factory=Counter)  # raw oversized frames sent, by worker
    malformed: dict[str, tuple[int, int]] = field(default_factory=dict)  # worker: (sent, counted)
    drops: dict[str, tuple[int, int]] = field(default_factory=dict)  # worker: (sent, counted)
    blocks_free: dict[str, tuple[int, int]] = field(default_factory=dict)  # worker: (free, total)
    missing: int = 0  # malformed messages to a ROUTER never answered bad_request
    unexpected: list[str] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    greedy_before: str = ""
    greedy_after: str = ""

    @property
    def messages(self) -> int:
        return sum(self.sent.values())

    @property
    def all_free(self) -> bool:
        return bool(self.blocks_free) and all(f == t for f, t in self.blocks_free.values())

    @property
    def ok(self) -> bool:
        return (
            not (self.crashes or self.unexpected or self.problems or self.missing)
            and self.all_free
            and self.greedy_before == self.greedy_after != ""
        )

    def blocks(self, log_dir: Path) -> bool:
        """Read the workers' KV pools; True when every block is free."""
        for svc in ("prefill", "decode"):
            body = fetch(ready(log_dir, svc)["http"] + "/metrics")
            self.blocks_free[svc] = (
                int(metric(body, f"{svc}_free_blocks")),
                int(metric(body, f"{svc}_total_blocks")),
            )
        return self.all_free

    def check(
        self, log_dir: Path, before: dict[str, float], after: dict[str, float], expected: dict[str, int]
    ) -> None:
        """``expected``: malformed messages sent to each worker (as the fuzzer's decoding judged)."""
        for svc in WORKERS:
            try:
                fetch(ready(log_dir, svc)["http"] + "/health")
            except OSError as e:
                self.crashes.append(f"{svc} is not live: {e}")
            if after[f"{svc}_internal"] > before[f"{svc}_internal"]:
                self.crashes.append(
                    f"{svc}: {after[f'{svc}_internal'] - before[f'{svc}_internal']:.0f} internal errors"
                )
            counted = int(after[f"{svc}_malformed_messages"] - before[f"{svc}_malformed_messages"])
            self.malformed[svc] = (expected.get(svc, 0), counted)
            if counted != expected.get(svc, 0):
                self.problems.append(
                    f"{svc} counted {counted} malformed messages, {expected.get(svc, 0)} were sent"
                )
            drops = int(after[f"{svc}_oversized_drops"] - before[f"{svc}_oversized_drops"])
            self.drops[svc] = (self.oversized[svc], drops)
            if drops != self.oversized[svc]:
                self.problems.append(
                    f"{svc} counted {drops} oversized drops, {self.oversized[svc]} were sent"
                )
        for key, what in (("tracebacks", "tracebacks in the logs"), ("exits", "services exited")):
            if after[key] > before[key]:
                self.crashes.append(f"{after[key] - before[key]:.0f} {what}")

    def lines(self, seed: int) -> list[str]:
        kinds = sorted({k for _, k in self.sent}, key=lambda k: (k == "oversized", k))
        types = sorted({t for t, _ in self.sent})
        width = max(map(len, types)) + 2
        out = [f"wire fuzz: {self.messages} messages, seed {seed}, {self.seconds:.1f} s", ""]
        out.append("sent, by message type (rows) and mutation (columns):")
        out.append(" " * width + " ".join(f"{k[:9]:>9}" for k in kinds) + f" {'total':>7}")
        for t in types:
            row = [self.sent.get((t, k), 0) for k in kinds]
            out.append(f"{t:<{width}}" + " ".join(f"{n:>9}" for n in row) + f" {sum(row):>7}")
        col = [sum(self.sent.get((t, k), 0) for t in types) for k in kinds]
        out.append(f"{'total':<{width}}" + " ".join(f"{n:>9}" for n in col) + f" {sum(col):>7}")
        out += ["", "replies received: " + ", ".join(f"{k} {n}" for k, n in sorted(self.replies.items()))]
        for svc, (sent, counted) in self.malformed.items():
            drops = self.drops.get(svc, (0, 0))
            out.append(
                f"{svc:8s} malformed sent {sent:4d}, counted {counted:4d}; oversized sent {drops[0]:3d}, dropped {drops[1]:3d}"
            )
        out.append(f"unanswered malformed messages to ROUTERs: {self.missing}")
        out.append(
            f"crashes: {len(self.crashes)}" + (f" ({'; '.join(self.crashes)})" if self.crashes else "")
        )
        out.append(
            f"unexpected replies: {len(self.unexpected)}" + "".join(f"\n  {u}" for u in self.unexpected[:10])
        )
        out.append("KV blocks free: " + ", ".join(f"{s} {f}/{t}" for s, (f, t) in self.blocks_free.items()))
        same = self.greedy_before == self.greedy_after
        out.append(
            f"greedy request after fuzzing: {'same text as before' if same else 'DIFFERENT'} ({self.greedy_after!r})"
        )
        out += [f"problem: {p}" for p in self.problems]
        out.append(f"RESULT: {'PASS' if self.ok else 'FAIL'}")
        return out
