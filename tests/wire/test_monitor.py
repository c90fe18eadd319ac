"""The connection monitor: a frame over the size limit is a counted drop naming the peer; a peer
that hangs up, or one that never speaks ZMTP, is not counted as one."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import zmq

from bench.fuzz_wire import send_oversized
from shared.wire import DealerSocket, PullSocket, RouterSocket, monitor
from shared.wire.messages import RouterHeartbeat
from shared.wire.monitor import Drop, DropReason

pytestmark = pytest.mark.unit


@pytest.fixture
def drops() -> Iterator[list[Drop]]:
    got: list[Drop] = []
    stop = monitor.listen(got.append)
    yield got
    stop()


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not check():
        time.sleep(0.02)
    return check()


def test_an_oversized_frame_is_a_counted_drop_naming_the_peer(drops: list[Drop]) -> None:
    with RouterSocket("tcp://127.0.0.1:0", bind=True, max_frame_bytes=1000) as server:
        dealer: zmq.Socket = zmq.Context.instance().socket(zmq.DEALER)
        dealer.connect(server.endpoint)
        try:
            time.sleep(0.3)  # connected a while (a connection dropped within ms of its accept may escape)
            dealer.send(b"x" * 200_000)
            assert wait_for(lambda: len(drops) == 1), "no drop reported"
            assert server.recv(0.2) is None  # the application never saw it
            drop = drops[0]
            assert drop.reason is DropReason.OVERSIZED
            assert drop.endpoint == server.endpoint
            host, port = drop.peer.rsplit(":", 1)
            assert host == "127.0.0.1" and int(port) > 0
        finally:
            dealer.close(linger=0)


def test_a_raw_frame_header_announcing_too_much_is_dropped_too(drops: list[Drop]) -> None:
    with PullSocket("tcp://127.0.0.1:0", bind=True, max_frame_bytes=1 << 20) as inbox:
        assert send_oversized(inbox.endpoint, router=False)  # the service hung up on it
        assert wait_for(lambda: len(drops) == 1)
        assert drops[0].reason is DropReason.OVERSIZED


def test_a_peer_that_hangs_up_or_sends_good_frames_is_no_drop(drops: list[Drop]) -> None:
    with RouterSocket("tcp://127.0.0.1:0", bind=True, accept=[RouterHeartbeat]) as server:
        for _ in range(3):
            with DealerSocket(server.endpoint, bind=False) as dealer:
                dealer.send(RouterHeartbeat("tcp://127.0.0.1:9", 1.0))
                assert server.recv(5) is not None
        host, port = server.endpoint.removeprefix("tcp://").rsplit(":", 1)
        socket.create_connection((host, int(port))).close()  # a port probe
        time.sleep(0.5)
    assert drops == []


def test_a_peer_breaking_the_handshake_is_a_protocol_drop(drops: list[Drop]) -> None:
    with RouterSocket("tcp://127.0.0.1:0", bind=True) as server:
        host, port = server.endpoint.removeprefix("tcp://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), 5) as s:
            greeting = b"\xff" + b"\0" * 8 + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\0") + b"\0" * 32
            s.sendall(greeting + bytes([0x04, 5]) + b"\x05HELO")  # a command that is not READY
            assert wait_for(lambda: len(drops) == 1)
    assert drops[0].reason is DropReason.PROTOCOL


def test_counters_follow_the_drops() -> None:
    class Count:
        n = 0

        def inc(self) -> None:
            self.n += 1

    oversized, protocol = Count(), Count()
    stop = monitor.count_drops(oversized, protocol)
    try:
        with PullSocket("tcp://127.0.0.1:0", bind=True, max_frame_bytes=1 << 20) as inbox:
            assert send_oversized(inbox.endpoint, router=False)
            assert wait_for(lambda: oversized.n == 1)
    finally:
        stop()
    assert protocol.n == 0


def test_closing_a_socket_stops_its_monitor() -> None:
    def monitors() -> int:
        return sum(t.name == "zmq-monitor" for t in threading.enumerate())

    before = monitors()
    sock = RouterSocket("tcp://127.0.0.1:0", bind=True)
    assert monitors() == before + 1
    sock.close()
    assert monitors() == before
