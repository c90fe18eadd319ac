"""Runs a set of services as child processes on one machine: start, wait until ready, restart, stop.

Each service is ``python -m <module> <args> --ready-file F``; a service writes F (JSON with its
endpoints) once it serves, which is how the supervisor knows it is ready. Life cycle:

1. ``start()`` launches every service and waits (with a deadline) for all ready files; a service
   that exits or misses the deadline fails the start with the tail of its log.
2. ``watch(stop)`` polls the children; one that exits is restarted with exponential backoff, up to
   ``max_restarts`` times in a row (a restart that reaches ready resets the count).
3. ``stop()`` sends SIGTERM to all, waits, then SIGKILLs stragglers.

While they run, ``add(spec)`` starts one more service (a worker that registers itself with the
routers it reports to) and ``drain(name)`` sends one SIGTERM and waits for its exit status
(a worker drains first: it finishes what it holds, deregisters, exits 0).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from shared.ready import read_ready_file

log = logging.getLogger("supervisor")


@dataclass(frozen=True)
class ServiceSpec:
    name: str  # unique, e.g. "encoder-0"
    module: str  # e.g. "services.encoder"
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class _Child:
    spec: ServiceSpec
    proc: subprocess.Popen
    ready_file: Path
    log_file: Path
    info: dict | None = None
    restarts: int = 0
    next_restart: float = 0.0


class Supervisor:
    def __init__(self, specs: list[ServiceSpec], log_dir: Path, max_restarts: int = 5) -> None:
        if len({s.name for s in specs}) != len(specs):
            raise ValueError("service names must be unique")
        self.specs = specs
        self.log_dir = log_dir
        self.max_restarts = max_restarts
        self.children: dict[str, _Child] = {}
        log_dir.mkdir(parents=True, exist_ok=True)

    def _launch(self, spec: ServiceSpec) -> _Child:
        ready = self.log_dir / f"{spec.name}.ready.json"
        ready.unlink(missing_ok=True)
        log_file = self.log_dir / f"{spec.name}.log"
        # The children run the same interpreter in the same mode: an isolated parent (python -I)
        # gets isolated children, so nothing in the working directory shadows the installed code.
        isolated = ["-I"] if sys.flags.isolated else []
        cmd = [sys.executable, *isolated, "-m", spec.module, *spec.args, "--ready-file", str(ready)]
        env = {**os.environ, **spec.env}
        with open(log_file, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        log.info("started %s (pid %d): %s", spec.name, proc.pid, " ".join(cmd[1:]))
        return _Child(spec, proc, ready, log_file)

    def start(self, timeout: float = 300.0) -> dict[str, dict]:
        """Launch all services and wait until every one is ready; returns name -> ready info."""
        for spec in self.specs:
            self.children[spec.name] = self._launch(spec)
        deadline = time.monotonic() + timeout
        for child in self.children.values():
            while child.info is None:
                if child.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    why = (
                        f"exited with {child.proc.returncode}"
                        if child.proc.returncode is not None
                        else "timed out"
                    )
                    raise RuntimeError(f"{child.spec.name} {why}; log tail:\n{_tail(child.log_file)}")
                child.info = read_ready_file(child.ready_file)
                time.sleep(0.05)
        return {name: c.info for name, c in self.children.items() if c.info is not None}

    def add(self, spec: ServiceSpec, timeout: float = 300.0) -> dict:
        """Start one more service and wait until it is ready; returns its ready info."""
        if spec.name in self.children:
            raise ValueError(f"a service named {spec.name} runs already")
        child = self.children[spec.name] = self._launch(spec)
        deadline = time.monotonic() + timeout
        while (info := read_ready_file(child.ready_file)) is None:
            if child.proc.poll() is not None or time.monotonic() > deadline:
                child.proc.kill()
                child.proc.wait()
                del self.children[spec.name]
                raise RuntimeError(f"{spec.name} did not become ready; log tail:\n{_tail(child.log_file)}")
            time.sleep(0.05)
        child.info = info
        return info

    def drain(self, name: str, timeout: float = 120.0) -> int:
        """SIGTERM one service and wait for it (SIGKILL after ``timeout``); returns its exit status.
        It is forgotten: ``watch`` does not restart it."""
        child = self.children.pop(name)
        child.proc.terminate()
        try:
            return child.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            child.proc.kill()
            return child.proc.wait()

    def watch(self, stop: threading.Event, poll_s: float = 0.5) -> None:
        """Restart services that exit until ``stop`` is set."""
        while not stop.wait(poll_s):
            for name, child in list(self.children.items()):
                if child.proc.poll() is None:
                    if child.info is None and (info := read_ready_file(child.ready_file)) is not None:
                        child.info, child.restarts = info, 0
                        log.info("%s is ready again", name)
                    continue
                if child.restarts >= self.max_restarts:
                    raise RuntimeError(f"{name} keeps crashing; log tail:\n{_tail(child.log_file)}")
                now = time.monotonic()
                if child.next_restart == 0.0:
                    delay = min(30.0, 0.5 * 2**child.restarts)
                    log.warning("%s exited with %s; restarting in %.1fs", name, child.proc.returncode, delay)
                    child.next_restart = now + delay
                elif now >= child.next_restart:
                    fresh = self._launch(child.spec)
                    fresh.restarts = child.restarts + 1
                    self.children[name] = fresh

    def stop(self, timeout: float = 10.0) -> None:
        for child in self.children.values():
            if child.proc.poll() is None:
                child.proc.terminate()
        deadline = time.monotonic() + timeout
        for child in self.children.values():
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"
