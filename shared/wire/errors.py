"""The one exception type of the wire layer."""

from __future__ import annotations


class WireError(ValueError):
    """A message that cannot be encoded, decoded or delivered; the text says what and where.

    ``request_id`` and ``msg_type`` are filled in, best effort, when the offending message got far
    enough to reveal them, so that a service can tag its error reply; ``peer`` is the ZMQ routing
    identity of the sender when the message came through a ROUTER socket.
    """

    def __init__(
        self,
        message: str,
        *,
        request_id: str | None = None,
        msg_type: str | None = None,
        peer: bytes | None = None,
    ) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.msg_type = msg_type
        self.peer = peer


class WireTimeout(WireError):
    """A send or receive did not complete before its deadline."""
