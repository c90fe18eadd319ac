"""``python -m bench.tree_cpu PID``: CPU seconds (user + system) of a process and all its descendants.

    python -m bench.tree_cpu 1234 > before.json          # {"<pid> <name>": seconds, ...}
    ...load...
    python -m bench.tree_cpu 1234 --since before.json --requests 256

With ``--since`` it prints, per process, the CPU milliseconds spent per request since the snapshot,
and their total: what a server costs per request whatever its process layout (ours: a router and
one process per worker; vLLM: its API server, engine core and worker). A process is named by the
module it runs (``python -m MODULE``) or else by its command line (vLLM sets ``VLLM::EngineCore``).
Reads ``/proc`` only (Linux), stdlib only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (which may hold spaces)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def descendants(root: int) -> list[int]:
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent[int(entry)] = int(_stat(int(entry))[1])
            except (OSError, IndexError, ValueError):  # gone meanwhile
                continue
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, ppid in parent.items() if ppid in frontier]
        tree += frontier
    return tree


def name(pid: int) -> str:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    if "-m" in argv[:-1]:
        return argv[argv.index("-m") + 1]
    return " ".join(a for a in argv if a)[:60] or Path(f"/proc/{pid}/comm").read_text().strip()


def snapshot(root: int) -> dict[str, float]:
    """{"<pid> <name>": CPU seconds} for ``root`` and every descendant alive now."""
    out: dict[str, float] = {}
    for pid in descendants(root):
        try:
            fields = _stat(pid)
            out[f"{pid} {name(pid)}"] = (int(fields[11]) + int(fields[12])) / TICK
        except (OSError, IndexError, ValueError):
            continue
    return out


def per_request(before: dict[str, float], after: dict[str, float], requests: int) -> dict[str, float]:
    """CPU milliseconds per request of each process between two snapshots, and ``total``."""
    used = {key: 1000 * (s - before.get(key, 0.0)) / requests for key, s in after.items()}
    used = {key: ms for key, ms in used.items() if ms > 0}
    used["total"] = sum(used.values())
    return used


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tree_cpu", description=__doc__.splitlines()[0])
    p.add_argument("pid", type=int)
    p.add_argument("--since", type=Path, help="a snapshot written before: print ms per request since it")
    p.add_argument("--requests", type=int, default=1)
    a = p.parse_args(argv)
    now = snapshot(a.pid)
    if a.since is None:
        json.dump(now, sys.stdout)
        print()
        return 0
    used = per_request(json.loads(a.since.read_text()), now, a.requests)
    total = used.pop("total")
    for key, ms in sorted(used.items(), key=lambda kv: -kv[1]):
        print(f"  server cpu {ms:8.2f} ms/request  {key}")
    print(f"  server cpu {total:8.2f} ms/request  total")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
