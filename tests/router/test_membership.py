"""The router's worker registry (``router.workers``): workers register with their first load
report, drain, leave or go silent; what is picked for new work and what is still live."""

from __future__ import annotations

import pytest

from router.workers import Encoder, Prefill, Workers
from shared.wire.messages import LoadReport, Stage, WorkerState

pytestmark = pytest.mark.unit

TIMEOUT = 3.0


def report(kind: Stage, port: int, state: WorkerState = WorkerState.SERVING, **load: int) -> LoadReport:
    inbox = "" if kind is Stage.ENCODER else f"tcp://10.0.0.{port % 250}:{port + 1}"
    return LoadReport(
        f"{kind.value}-{port}", kind, f"tcp://10.0.0.{port % 250}:{port}", inbox, state=state, **load
    )


def learned() -> Workers:
    w = Workers({}, {}, TIMEOUT)
    for kind, port in ((Stage.ENCODER, 5600), (Stage.PREFILL, 5700), (Stage.DECODE, 5800)):
        w.heard(report(kind, port), now=0.0)
    return w


def test_the_first_report_registers_a_worker_of_each_kind() -> None:
    w = Workers({}, {}, TIMEOUT)
    assert w.ready(0.0) == {"encoder": False, "prefill": False, "decode": False}
    w.heard(report(Stage.ENCODER, 5600), now=0.0)
    w.heard(report(Stage.PREFILL, 5700), now=0.0)
    w.heard(report(Stage.DECODE, 5800, running=2, free_blocks=9), now=0.0)
    assert w.ready(1.0) == {"encoder": True, "prefill": True, "decode": True}
    p = w.prefills["tcp://10.0.0.200:5700"]
    assert (p.inbox, p.static) == ("tcp://10.0.0.200:5701", False)
    d = w.decodes["tcp://10.0.0.50:5800"]
    assert (d.control, d.load()) == ("tcp://10.0.0.50:5801", 2)
    assert w.pick_prefill(set(), 64, 1.0) is p and w.pick_decode(set(), 1.0) is d
    assert w.assign_images(["h1", "h2"], 1.0) == {"tcp://10.0.0.100:5600": [0, 1]}


def test_a_draining_worker_gets_nothing_new_but_stays_live() -> None:
    w = learned()
    w.heard(report(Stage.ENCODER, 5601), now=0.5)
    w.heard(report(Stage.DECODE, 5802), now=0.5)
    for kind, port in ((Stage.ENCODER, 5600), (Stage.PREFILL, 5700), (Stage.DECODE, 5800)):
        w.heard(report(kind, port, WorkerState.DRAINING), now=1.0)
    assert w.pick_prefill(set(), 64, 1.0) is None  # the only prefill worker drains
    assert w.pick_decode(set(), 1.0).kv == "tcp://10.0.0.52:5802"  # type: ignore[union-attr]
    assert list(w.assign_images(["a", "b"], 1.0)) == ["tcp://10.0.0.101:5601"]
    draining = w.decodes["tcp://10.0.0.50:5800"]
    assert w.alive(draining, 1.0)  # what it holds still finishes
    assert w.expire(1.0, busy=set()) == []


def test_leaving_and_silent_workers_are_gone_and_forgotten_once_unreferenced() -> None:
    w = learned()
    w.heard(report(Stage.DECODE, 5800, WorkerState.LEAVING), now=1.0)
    w.heard(report(Stage.ENCODER, 5600), now=1.0)
    d = w.decodes["tcp://10.0.0.50:5800"]
    assert not w.alive(d, 1.0)
    assert w.expire(1.0, busy={d.kv}) == []  # a live request still names it: kept until it is failed over
    assert w.expire(1.0, busy=set()) == [d.kv]
    # the prefill worker's last report was at 0.0: silent past the timeout
    assert w.alive(w.prefills["tcp://10.0.0.200:5700"], TIMEOUT)
    assert w.expire(TIMEOUT + 0.5, busy=set()) == ["tcp://10.0.0.200:5700"]
    assert set(w.encoders) == {"tcp://10.0.0.100:5600"}
    # it comes back: registered again
    w.heard(report(Stage.PREFILL, 5700), now=5.0)
    assert w.ready(5.0)["prefill"]


def test_configured_workers_stay_and_follow_their_health_and_reports() -> None:
    enc, pre = (
        Encoder(zmq="tcp://10.0.0.100:5600", http="http://e:8600"),
        Prefill(zmq="tcp://p:5700", inbox="tcp://p:5701"),
    )
    w = Workers.configured([enc], [pre], TIMEOUT)
    assert enc.static and not w.ready(0.0)["encoder"]  # not ready until its /ready says so
    enc.ready = pre.ready = True
    assert w.ready(0.0)["encoder"] and w.alive(pre, 100.0)  # never reported: its health decides
    w.heard(report(Stage.ENCODER, 5600), now=0.0)  # the same worker, now reporting
    assert list(w.encoders) == ["tcp://10.0.0.100:5600"]
    assert not w.alive(enc, TIMEOUT + 1)  # reports stopped: gone, although configured ...
    assert w.expire(TIMEOUT + 1, busy=set()) == []  # ... and kept, as configured
    enc.ready = False
    w.heard(report(Stage.ENCODER, 5600), now=10.0)
    assert not w.alive(enc, 10.0)  # a report does not override a failing /ready
