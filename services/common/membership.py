"""A worker's membership of the cluster: registering with the routers, heartbeats both ways, and
the drain that ends it.

Owns: the load reports this worker sends to every router of ``--report-to`` (``LoadReport``; the
first registers it, the rest are its heartbeat; a target whose host name resolves to several
addresses, such as a Kubernetes headless Service, means each of them, resolved at start and then
every ``RESOLVE_EVERY_S`` by a background thread, so that routers that come later are found and a
slow name server never stalls the serving loop), the worker's state (serving ->
draining on SIGTERM -> leaving as it exits), and what it heard from routers (``RouterHeartbeat``):
a router heard from and then silent for ``--router-timeout-s`` is gone, and the server drops the
requests it owns.

The serving loop calls ``tick(load)`` once per turn (reports go out when due, and at once after a
state change) and ``heard(msg)`` for each router heartbeat; ``gone_routers()`` names the routers
that went silent since the last call. Sends never block the loop for long: a report that finds a
router's queue full is dropped (the next one follows).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from shared.flags import ServiceFlags
from shared.wire import PushPool, WireError
from shared.wire.messages import LoadReport, RouterHeartbeat, Stage, WorkerState

log = logging.getLogger("membership")
RESOLVE_EVERY_S = 5.0
SEND_TIMEOUT_S = 0.0  # never wait: a report that cannot be queued now is dropped


@dataclass
class Load:
    running: int = 0
    queued: int = 0
    free_blocks: int = 0
    total_blocks: int = 0
    cache_bytes: int = 0


def resolve(target: str) -> list[str]:
    """``tcp://HOST:PORT`` -> one ``tcp://IP:PORT`` per address HOST resolves to (sorted); [] when it
    does not resolve (yet: a Service with no ready pod)."""
    host, port = target.removeprefix("tcp://").rsplit(":", 1)
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except OSError:
        return []
    ips = sorted({str(info[4][0]) for info in infos})
    return [f"tcp://[{ip}]:{port}" if ":" in ip else f"tcp://{ip}:{port}" for ip in ips]


class Membership:
    def __init__(
        self, cfg: ServiceFlags, kind: Stage, name: str, address: str, inbox: str = "", http: str = "",
        resolver: Callable[[str], list[str]] = resolve,
    ) -> None:  # fmt: skip
        self.kind, self.name, self.address, self.inbox, self.http = kind, name, address, inbox, http
        self.targets = cfg.report_addresses
        self.interval_s, self.router_timeout_s = cfg.report_interval_s, cfg.router_timeout_s
        self.resolver = resolver
        self.state = WorkerState.SERVING
        self.routers_heard: dict[str, float] = {}  # router inbox -> monotonic time of its last heartbeat
        self.outbox = PushPool()
        self.next_report = 0.0
        self.routers: list[str] = self._resolved()  # the report addresses (replaced whole, never mutated)
        log.info("reporting to %s", ", ".join(self.routers) or "no router (yet)")
        self._closed = threading.Event()
        if self.targets:
            threading.Thread(target=self._refresh, name="report-targets", daemon=True).start()

    @property
    def draining(self) -> bool:
        return self.state is not WorkerState.SERVING

    def drain(self) -> None:
        """Stop taking new work: the next report (sent at the next tick) says so."""
        if self.state is WorkerState.SERVING:
            self.state = WorkerState.DRAINING
            self.next_report = 0.0
            log.info("%s draining: admitting nothing new", self.name)

    def tick(self, load: Callable[[], Load]) -> None:
        now = time.monotonic()
        if now >= self.next_report:
            self.next_report = now + self.interval_s
            self._send(load())

    def leave(self, load: Load) -> None:
        """The last report: this worker is going; routers forget it at once."""
        self.state = WorkerState.LEAVING
        self._send(load)

    def heard(self, msg: RouterHeartbeat) -> None:
        self.routers_heard[msg.inbox] = time.monotonic()

    def gone_routers(self) -> list[str]:
        """Routers heard from, silent for ``--router-timeout-s`` since: forgotten as they are returned."""
        now = time.monotonic()
        gone = [r for r, t in self.routers_heard.items() if now - t > self.router_timeout_s]
        for r in gone:
            del self.routers_heard[r]
            log.warning("router %s silent for %.1f s: taken as gone", r, self.router_timeout_s)
        return gone

    def close(self) -> None:
        self._closed.set()
        self.outbox.close()

    def _resolved(self) -> list[str]:
        return sorted({a for t in self.targets for a in self.resolver(t)})

    def _refresh(self) -> None:
        while not self._closed.wait(RESOLVE_EVERY_S):
            routers = self._resolved()
            if routers != self.routers:
                log.info("reporting to %s", ", ".join(routers) or "no router (yet)")
                self.routers = routers

    def _send(self, load: Load) -> None:
        report = LoadReport(
            self.name, self.kind, self.address, self.inbox, self.http, self.state, load.running, load.queued,
            load.free_blocks, load.total_blocks, load.cache_bytes, time.time(),
        )  # fmt: skip
        for router in self.routers:
            try:
                self.outbox.send(router, report, SEND_TIMEOUT_S)
            except WireError as e:
                log.debug("report to %s not sent: %s", router, e)
