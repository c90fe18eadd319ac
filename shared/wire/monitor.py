"""Connections ZMQ drops on its own: a frame over ``ZMQ_MAXMSGSIZE``, a peer breaking the protocol.

What libzmq does: its decoder reads a frame's size from the frame header, and one over the
socket's ``ZMQ_MAXMSGSIZE`` fails with ``EMSGSIZE``; the engine then closes the connection
(``stream_engine_base_t::error(protocol_error)``) before any of the frame reaches the
application. The only trace is the socket monitor's ``EVENT_DISCONNECTED``, whose value is the
file descriptor closed; there is no dedicated event (``EVENT_HANDSHAKE_FAILED_PROTOCOL`` comes
from the handshake and the security mechanisms only). A peer hanging up raises the same event.

How a drop is told from a hang-up: on ``EVENT_ACCEPTED`` (value: the new connection's descriptor)
this module keeps a duplicate of the descriptor, which names the peer (``getpeername``) and keeps
the kernel socket readable after libzmq closed its own. On ``EVENT_DISCONNECTED`` a non-blocking
peek tells who ended it: end of stream means the peer closed; unread bytes, or a connection still
open, mean this side closed it. libzmq reports every failed handshake (``HANDSHAKE_FAILED_*``,
timeouts included) in the same call that closes the connection, so the event right before the
disconnect says whether it failed there (a protocol drop when the peer was still talking; a port
probe that hangs up is nothing). A connection this side closes with no such event was closed for an
oversized frame: nothing else closes one after the handshake (no ZMQ heartbeats are configured, and
a Curve message that fails to decode raises ``HANDSHAKE_FAILED_PROTOCOL``). Best effort: the
descriptor is duplicated when this thread sees the accept, so a connection accepted and closed
before that (within milliseconds: a peer sending an oversized frame the instant it connects) is
logged as unclassified, not counted.

``ConnectionMonitor`` watches one bound socket from a daemon thread (``WireSocket`` starts one for
every socket it binds); each ``Drop`` is logged at WARNING with the peer and handed to every
function registered with ``listen`` (the services count them in their metrics: ``count_drops``).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import zmq
from prometheus_client import CollectorRegistry, Counter
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger("wire.monitor")
_EVENTS = (
    zmq.EVENT_ACCEPTED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_MONITOR_STOPPED
)


class DropReason(enum.StrEnum):
    OVERSIZED = "oversized"  # a frame over the socket's max message size
    PROTOCOL = "protocol"  # a ZMTP or security-mechanism violation


@dataclass(frozen=True)
class Drop:
    endpoint: str  # the bound socket's address
    peer: str  # host:port of the peer ("unknown" when it could not be read)
    reason: DropReason


_listeners: list[Callable[[Drop], None]] = []
_listeners_lock = threading.Lock()


def listen(fn: Callable[[Drop], None]) -> Callable[[], None]:
    """Call ``fn(drop)`` (from a monitor thread) for every drop in this process; returns the
    function that stops it."""
    with _listeners_lock:
        _listeners.append(fn)

    def stop() -> None:
        with _listeners_lock:
            if fn in _listeners:
                _listeners.remove(fn)

    return stop


def count_drops(oversized: Any, protocol: Any) -> Callable[[], None]:
    """Count this process's drops in two counters (anything with ``inc()``, e.g. Prometheus'):
    ``listen`` for the common case; returns the function that stops counting."""
    return listen(lambda d: (oversized if d.reason is DropReason.OVERSIZED else protocol).inc())


class WireCounters(NamedTuple):
    malformed: Counter  # messages that failed decoding or validation
    oversized_drops: Counter
    protocol_drops: Counter


def wire_counters(prefix: str, registry: CollectorRegistry) -> WireCounters:
    """A service's counters of bad traffic: ``<prefix>_malformed_messages``, ``_oversized_drops``,
    ``_protocol_drops``."""
    return WireCounters(
        Counter(
            f"{prefix}_malformed_messages", "Messages that failed decoding or validation", registry=registry
        ),
        Counter(
            f"{prefix}_oversized_drops",
            "Connections ZMQ dropped for a frame over the size limit",
            registry=registry,
        ),
        Counter(
            f"{prefix}_protocol_drops", "Connections ZMQ dropped for a protocol error", registry=registry
        ),
    )


def _report(drop: Drop) -> None:
    log.warning(
        "%s dropped the connection of %s: %s",
        drop.endpoint,
        drop.peer,
        "a frame exceeded the max message size" if drop.reason is DropReason.OVERSIZED else "protocol error",
    )
    with _listeners_lock:
        listeners = list(_listeners)
    for fn in listeners:
        try:
            fn(drop)
        except Exception:  # a listener's bug must not stop the monitor
            log.exception("drop listener failed")


@dataclass
class _Conn:
    sock: socket.socket | None  # our duplicate of libzmq's descriptor
    peer: str


def _peer_still_there(sock: socket.socket) -> bool:
    """True when the peer had not closed: bytes unread, or nothing to read yet (no end of stream)."""
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return True
    except OSError:  # reset by the peer
        return False


class ConnectionMonitor:
    """Watches the connections of one bound ZMQ socket. Create it before ``bind`` (so that no
    connection is missed) and ``stop`` it, from the socket's thread, before closing the socket."""

    def __init__(self, sock: zmq.Socket) -> None:
        self._sock = sock
        self._pair = sock.get_monitor_socket(_EVENTS)
        self._conns: dict[int, _Conn] = {}
        self._failed = 0  # the handshake failure (event) reported for the next disconnect
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zmq-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(zmq.ZMQError):  # already closed
            self._sock.disable_monitor()
        self._thread.join(2.0)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._pair.poll(100):
                    continue
                events: list[Any] = []
                while self._pair.poll(0):  # the whole batch: an accept whose disconnect follows is gone
                    events.append(recv_monitor_message(self._pair))
                for i, ev in enumerate(events):
                    if ev["event"] == zmq.EVENT_MONITOR_STOPPED:
                        return
                    self._handle(ev, events[i + 1 :])
        except zmq.ZMQError as e:  # the context is terminating
            log.debug("monitor stopped: %s", e)
        finally:
            for conn in self._conns.values():
                if conn.sock is not None:
                    conn.sock.close()
            self._pair.close(linger=0)

    def _handle(self, ev: Any, later: list[Any]) -> None:
        kind, value = ev["event"], ev["value"]
        endpoint = ev["endpoint"].decode(errors="replace") if isinstance(ev["endpoint"], bytes) else ""
        if kind == zmq.EVENT_ACCEPTED:
            gone = any(e["event"] == zmq.EVENT_DISCONNECTED and e["value"] == value for e in later)
            self._accepted(value, gone)
        elif kind & (
            zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_AUTH
        ):
            self._failed = kind
        elif kind == zmq.EVENT_DISCONNECTED:
            self._disconnected(value, endpoint)

    def _accepted(self, fd: int, gone: bool) -> None:
        old = self._conns.pop(fd, None)
        if old is not None and old.sock is not None:
            old.sock.close()
        if gone:  # closed again already: the descriptor may belong to someone else by now
            self._conns[fd] = _Conn(None, "unknown")
            return
        try:
            dup = socket.socket(fileno=os.dup(fd))
            host, port = dup.getpeername()[:2]
            self._conns[fd] = _Conn(dup, f"{host}:{port}")
        except OSError:
            self._conns[fd] = _Conn(None, "unknown")

    def _disconnected(self, fd: int, endpoint: str) -> None:
        conn = self._conns.pop(fd, None) or _Conn(None, "unknown")
        failed, self._failed = self._failed, 0
        try:
            ours = conn.sock is not None and _peer_still_there(conn.sock)  # this side closed it
            if failed == zmq.EVENT_HANDSHAKE_FAILED_AUTH:  # a refused key: shared.wire.security counts it
                log.debug("%s: peer %s refused by the authenticator", endpoint, conn.peer)
            elif ours or failed == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                _report(Drop(endpoint, conn.peer, DropReason.PROTOCOL if failed else DropReason.OVERSIZED))
            elif conn.sock is None:
                log.info("%s: a connection closed before it could be watched (unclassified)", endpoint)
            else:
                log.debug("%s: peer %s disconnected", endpoint, conn.peer)
        finally:
            if conn.sock is not None:
                conn.sock.close()
