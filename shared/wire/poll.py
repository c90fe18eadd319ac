"""Waiting on several wire sockets at once (a service loop with more than one inbound socket)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import zmq


def wait_readable(socks: Iterable[zmq.Socket], timeout: float) -> bool:
    """Block up to ``timeout`` seconds (rounded up to a millisecond: a short wait is a wait, not a
    spin) until any of ``socks`` has a message; True if one has."""
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    return bool(poller.poll(max(0, math.ceil(timeout * 1000))))
