"""A worker's membership (``services.common.membership``): load reports to every router a name
resolves to, over real ZMQ sockets on loopback; drain and leave; routers that go silent."""

from __future__ import annotations

import time

import pytest

from services.common.membership import Load, Membership, resolve
from shared.flags import ServiceFlags
from shared.wire import PullSocket
from shared.wire.messages import LoadReport, RouterHeartbeat, Stage, WorkerState

pytestmark = pytest.mark.unit


def inbox() -> PullSocket:
    return PullSocket("tcp://127.0.0.1:0", bind=True, accept=[LoadReport])


def reports(sock: PullSocket, timeout: float = 5.0) -> list[LoadReport]:
    got, deadline = [], time.monotonic() + timeout
    while not got and time.monotonic() < deadline:
        while (msg := sock.recv(0.05)) is not None:
            got.append(msg)
    return got


def test_a_name_that_resolves_to_several_routers_reports_to_each() -> None:
    a, b = inbox(), inbox()
    ports = {s.endpoint.rsplit(":", 1)[1] for s in (a, b)}
    # "routers:PORT" stands for a headless Service: one name, one address per router pod
    resolver = {f"tcp://routers:{p}": [f"tcp://127.0.0.1:{p}"] for p in ports}
    flags = ServiceFlags(report_to=",".join(resolver), report_interval_s=0.05)
    m = Membership(flags, Stage.PREFILL, "prefill-0", "tcp://10.1.2.3:5700", "tcp://10.1.2.3:5701",
                   "http://10.1.2.3:8700", resolver=lambda t: resolver[t])  # fmt: skip
    try:
        m.tick(lambda: Load(running=2, queued=3, free_blocks=7, total_blocks=9))
        for sock in (a, b):
            (r,) = reports(sock)[:1]
            assert (r.kind, r.address, r.inbox, r.http, r.state) == (
                Stage.PREFILL, "tcp://10.1.2.3:5700", "tcp://10.1.2.3:5701", "http://10.1.2.3:8700", WorkerState.SERVING,
            )  # fmt: skip
            assert (r.running, r.queued, r.free_blocks, r.total_blocks) == (2, 3, 7, 9)
        m.drain()
        m.tick(Load)  # a state change goes out at once, not at the next interval
        assert [r.state for r in reports(a)] == [WorkerState.DRAINING]
        m.leave(Load())
        assert reports(b)[-1].state is WorkerState.LEAVING
    finally:
        m.close()
        a.close()
        b.close()


def test_resolve_names_every_address_and_nothing_for_an_unknown_name() -> None:
    assert resolve("tcp://127.0.0.1:5900") == ["tcp://127.0.0.1:5900"]
    assert resolve("tcp://no-such-host.invalid:5900") == []


def test_a_router_heard_then_silent_is_gone_once() -> None:
    flags = ServiceFlags(router_timeout_s=0.2)
    m = Membership(flags, Stage.DECODE, "decode-0", "tcp://h:5801", "tcp://h:5800")
    m.heard(RouterHeartbeat("tcp://r1:5900", time.time()))
    assert list(m.routers_heard) == ["tcp://r1:5900"]  # a router never heard is never "gone"
    assert m.gone_routers() == []
    time.sleep(0.3)
    assert m.gone_routers() == ["tcp://r1:5900"]
    assert m.gone_routers() == []  # reported once
    m.close()


def test_report_targets_are_checked_at_start() -> None:
    with pytest.raises(ValueError, match="tcp://HOST:PORT"):
        ServiceFlags(report_to="routers:5900")
