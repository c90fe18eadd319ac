"""Typed ZMQ sockets: services send and receive messages, never frames.

* ``PushSocket`` / ``PullSocket``: one-way flows (encoder -> prefill embeddings, later KV).
* ``RouterSocket`` / ``DealerSocket``: request flows that may be answered (router -> encoder).
* ``PushPool``: one ``PushSocket`` per destination address, for services that deliver to the peer a
  request names (bounded; the least recently used connection is closed first).

Every receive takes a timeout (seconds) and returns None when it passes; every send takes one and
raises ``WireTimeout`` when the peer's queue stays full. A malformed inbound message raises
``WireError`` (with ``peer`` set on ROUTER sockets) after it has been consumed, so the next receive
sees the next message. ``max_frame_bytes`` bounds what a peer can make this process buffer: ZMQ
drops the connection of a peer that sends a larger frame, which the application never sees; every
bound socket therefore runs a ``shared.wire.monitor.ConnectionMonitor`` that logs and reports such
drops (with the peer's address).

Security: every socket takes the process's mesh security (``shared.wire.security``) as it binds
or connects: with keys configured a bound socket is a CurveZMQ server that admits only authorised
clients, a connecting one a Curve client; without, it is plain (a bind beyond loopback warns).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Self

import zmq

from shared.wire.codec import decode, encode
from shared.wire.errors import WireError, WireTimeout
from shared.wire.monitor import ConnectionMonitor
from shared.wire.security import secure

DEFAULT_HWM = 1000
DEFAULT_MAX_FRAME_BYTES = 1 << 30


def _ms(timeout: float) -> int:
    return max(0, int(timeout * 1000))


class WireSocket:
    """A ZMQ socket that speaks wire messages. ``bind=True`` binds ``address`` (``tcp://host:0``
    picks a free port; see ``endpoint``), else connects to it."""

    kind: int = -1

    def __init__(
        self,
        address: str,
        *,
        bind: bool,
        accept: Iterable[type] | None = None,
        hwm: int = DEFAULT_HWM,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        context: zmq.Context | None = None,
    ) -> None:
        self.accept = tuple(accept) if accept is not None else None
        self._sock = (context or zmq.Context.instance()).socket(self.kind)
        self._sock.setsockopt(zmq.LINGER, 1000)
        self._sock.setsockopt(zmq.SNDHWM, hwm)
        self._sock.setsockopt(zmq.RCVHWM, hwm)
        self._sock.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
        if bind and address.startswith("tcp://") and address.endswith(":0"):
            address = address[:-1] + "*"  # ZMQ's spelling of "any free port"
        secure(self._sock, server=bind, address=address)
        # Before the bind, so that no connection escapes it; inproc has no descriptors to watch.
        self._monitor = (
            ConnectionMonitor(self._sock) if bind and not address.startswith("inproc://") else None
        )
        try:
            self._sock.bind(address) if bind else self._sock.connect(address)
        except zmq.ZMQError as e:
            self._stop_monitor()
            self._sock.close(linger=0)
            raise WireError(f"cannot {'bind' if bind else 'connect to'} {address}: {e}") from None
        self.address = address

    @property
    def endpoint(self) -> str:
        """The address actually bound or connected (with the real port after ``:0``)."""
        return self._sock.getsockopt_string(zmq.LAST_ENDPOINT) or self.address

    def close(self) -> None:
        self._stop_monitor()
        self._sock.close()

    def _stop_monitor(self) -> None:
        if self._monitor is not None:
            self._monitor.stop()
            self._monitor = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # A poll may wake without a message to take: with ZAP (CurveZMQ keys) the first message of a
    # new connection reports POLLIN before it can be received. So EAGAIN after a poll waits on.
    def _send_frames(self, frames: list[Any], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._sock.poll(_ms(deadline - time.monotonic()), zmq.POLLOUT):
            try:
                self._sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                return
            except zmq.Again:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.001)
        raise WireTimeout(f"send to {self.endpoint} timed out after {timeout:.1f}s (peer queue full?)")

    def _recv_frames(self, timeout: float) -> list[zmq.Frame] | None:
        deadline = time.monotonic() + timeout
        while self._sock.poll(_ms(deadline - time.monotonic()), zmq.POLLIN):
            try:
                return self._sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.001)
        return None

    def _decode(self, frames: list[zmq.Frame], peer: bytes | None = None) -> Any:
        try:
            return decode(frames, self.accept)
        except WireError as e:
            e.peer = peer
            raise

    @property
    def zmq_socket(self) -> zmq.Socket:
        """The raw socket, for registering in a ``zmq.Poller`` only (never send or receive on it)."""
        return self._sock


class PushSocket(WireSocket):
    kind = zmq.PUSH

    def send(self, msg: Any, timeout: float = 5.0) -> int:
        """Send ``msg``; returns the bytes handed to ZMQ (header plus data frames)."""
        frames = encode(msg)
        self._send_frames(frames, timeout)
        return sum(len(f) for f in frames)


class PullSocket(WireSocket):
    kind = zmq.PULL

    def recv(self, timeout: float) -> Any | None:
        frames = self._recv_frames(timeout)
        return None if frames is None else self._decode(frames)


class DealerSocket(WireSocket):
    kind = zmq.DEALER

    def send(self, msg: Any, timeout: float = 5.0) -> int:
        frames = encode(msg)
        self._send_frames(frames, timeout)
        return sum(len(f) for f in frames)

    def recv(self, timeout: float) -> Any | None:
        frames = self._recv_frames(timeout)
        return None if frames is None else self._decode(frames)


class RouterSocket(WireSocket):
    """Receives ``(peer, message)`` from DEALERs and answers a given peer."""

    kind = zmq.ROUTER

    def __init__(self, address: str, **kwargs: Any) -> None:
        super().__init__(address, **kwargs)
        # An answer to a peer that has gone away must fail loudly, not vanish.
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)

    def recv(self, timeout: float) -> tuple[bytes, Any] | None:
        frames = self._recv_frames(timeout)
        if frames is None:
            return None
        peer = frames[0].bytes
        return peer, self._decode(frames[1:], peer)

    def send(self, peer: bytes, msg: Any, timeout: float = 5.0) -> int:
        frames = encode(msg)
        # A ROUTER is never "writable" as a whole (POLLOUT depends on the peer), so retry instead.
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._sock.send_multipart([peer, *frames], flags=zmq.NOBLOCK, copy=False)
                return sum(len(f) for f in frames)
            except zmq.Again:
                if time.monotonic() >= deadline:
                    raise WireTimeout(f"answer to peer {peer!r} timed out after {timeout:.1f}s") from None
                time.sleep(0.001)
            except zmq.ZMQError as e:  # EHOSTUNREACH (ROUTER_MANDATORY): the peer has gone
                raise WireError(f"cannot answer peer {peer!r}: {e}") from None


class PushPool:
    """Connected ``PushSocket``s by destination address, at most ``max_sockets`` of them."""

    def __init__(self, max_sockets: int = 64, hwm: int = DEFAULT_HWM) -> None:
        self.max_sockets = max_sockets
        self.hwm = hwm
        self._socks: OrderedDict[str, PushSocket] = OrderedDict()

    def get(self, address: str) -> PushSocket:
        sock = self._socks.get(address)
        if sock is None:
            if len(self._socks) >= self.max_sockets:
                _, oldest = self._socks.popitem(last=False)
                oldest.close()
            sock = self._socks[address] = PushSocket(address, bind=False, hwm=self.hwm)
        self._socks.move_to_end(address)
        return sock

    def send(self, address: str, msg: Any, timeout: float = 5.0) -> int:
        return self.get(address).send(msg, timeout)

    def close(self) -> None:
        for sock in self._socks.values():
            sock.close()
        self._socks.clear()
