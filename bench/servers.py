"""Start a serving setup as a child process for a benchmark, and stop it afterwards.

``serve(server, log_dir)`` is a context manager: it runs ``server.command`` in its own session with
stdout and stderr in ``log_dir/<name>.out``, waits (up to ``server.timeout``) for the line
"OpenAI API at URL" and, when ``server.ready_line`` is set, for that line too (``epd up`` prints
"cluster ready" once every worker is up), and yields the URL (up to and including ``/v1``);
``server.cwd`` and ``server.env`` (the whole environment) replace the caller's, and ``started``
gets the process as soon as it runs. On the way out it sends SIGINT (the process's own Ctrl-C path
stops its children), waits, and kills the whole session if that does not work. A server that exits or stays silent past its deadline raises
``ServerError`` carrying the tail of its output and of the ``*.log`` files in ``log_dir``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ANNOUNCE = "OpenAI API at "


class ServerError(RuntimeError):
    """A server did not come up; the message ends with the tail of its logs."""


@dataclass(frozen=True)
class Server:
    name: str
    command: tuple[str, ...]
    ready_line: str | None = None  # printed after the API line once the server is really ready
    timeout: float = 300.0  # seconds to wait for readiness
    stop_timeout: float = 60.0  # seconds between SIGINT and SIGKILL
    cwd: Path | None = None  # working directory (default: the caller's)
    env: dict[str, str] | None = None  # the whole environment (default: the caller's)


def log_tail(log_dir: Path, chars: int = 3000) -> str:
    """The last ``chars`` characters of every ``*.out`` and ``*.log`` file in ``log_dir``."""
    files = sorted([*log_dir.glob("*.out"), *log_dir.glob("*.log")])
    return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-chars:]}" for p in files)


def _announced_url(lines: Sequence[str], ready_line: str | None) -> str | None:
    url = next((ln[len(ANNOUNCE) :].split()[0] for ln in lines if ln.startswith(ANNOUNCE)), None)
    if url is None or (ready_line and not any(ready_line in ln for ln in lines)):
        return None
    return url


def _wait_ready(proc: subprocess.Popen, out: Path, server: Server) -> str:
    deadline = time.monotonic() + server.timeout
    while True:
        lines = out.read_text(errors="replace").splitlines()
        if url := _announced_url(lines, server.ready_line):
            return url
        if proc.poll() is not None:
            raise ServerError(f"{server.name} exited with status {proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise ServerError(f"{server.name} was not ready after {server.timeout:.0f} s")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen, timeout: float) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout)
        return
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the whole session: children the leader left behind too
    proc.wait()


@contextlib.contextmanager
def serve(
    server: Server, log_dir: Path, started: Callable[[subprocess.Popen], None] | None = None
) -> Iterator[str]:
    """Run ``server`` until the ``with`` block ends; yields its API URL (``http://HOST:PORT/v1``)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out = log_dir / f"{server.name}.out"
    with open(out, "w") as f:
        proc = subprocess.Popen(
            server.command,
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=server.cwd,
            env=server.env,
        )
    try:
        if started is not None:
            started(proc)
        try:
            url = _wait_ready(proc, out, server)
        except ServerError as e:
            _stop(proc, server.stop_timeout)
            raise ServerError(f"{e}; command: {' '.join(server.command)}\n{log_tail(log_dir)}") from None
        yield url
    finally:
        _stop(proc, server.stop_timeout)
