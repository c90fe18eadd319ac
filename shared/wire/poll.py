"""Waiting on several wire sockets at once (a service loop with more than one inbound socket)."""

from __future__ import annotations

from collections.abc import Iterable

import zmq


def wait_readable(socks: Iterable[zmq.Socket], timeout: float) -> bool:
    """Block up to ``timeout`` seconds until any of ``socks`` has a message; True if one has."""
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    return bool(poller.poll(max(0, int(timeout * 1000))))
