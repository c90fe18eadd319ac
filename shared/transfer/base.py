"""The KV transfer interface: what prefill and decode services call, whatever moves the bytes.

Protocol of one transfer (see ``shared.wire.messages.kv`` for the messages)::

    sender.reserve(dest, KVReserve)        receiver.poll() -> KVReserve
                                           receiver.grant(blocks) / queued / refuse
    sender.poll() -> TransferReply: GRANTED (with the grant) | QUEUED (GRANTED later) | REFUSED
    sender.send(dest, grant, ...) per step receiver.poll() -> KVLayer per layer (zmq), or
                                           KVProgress once one-sided writes landed (mooncake)
    sender.finish(dest, KVDone)            receiver.poll() -> KVDone; receiver.ack
    sender.poll() -> ACKED                 (the sender may now free its blocks)

``send`` ships every layer's KV of a range of prompt tokens, as soon as they are computed: the
hand-off is layer-pipelined with the prefill's chunks. Either side may give up: ``sender.abort``
reaches the receiver as ``KVAbort``; a receiver that gives up answers ``refuse`` (before the
data) or simply never acks: the sender's deadline catches it. A sender whose writes fail reports
FAILED. Nothing here waits without a timeout, and neither side ever trusts the other to be alive:
the service loops own the deadlines.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass

import zmq

from shared.engine.kv_pool import KVPool
from shared.wire.messages import ErrorKind, KVAbort, KVDone, KVGrant, KVLayer, KVProgress, KVReserve

KVInbound = KVReserve | KVLayer | KVProgress | KVDone | KVAbort


class ReplyEvent(enum.StrEnum):
    """What a receiver answered about one transfer."""

    GRANTED = "granted"  # room reserved: send the layers
    QUEUED = "queued"  # no room yet: a grant or a refusal follows
    REFUSED = "refused"  # no room before the deadline, or the transfer is unacceptable
    ACKED = "acked"  # every layer is stored: the sender may free its copy
    FAILED = "failed"  # the sender's own writes did not land (the receiver is gone or refused them)


@dataclass(frozen=True)
class TransferReply:
    """What the sender learned about one transfer."""

    request_id: str
    event: ReplyEvent
    kind: ErrorKind | None = None  # refused or failed: why
    message: str = ""
    grant: KVGrant | None = None  # granted: where the KV goes


class KVSender(ABC):
    """Prefill's side, reading the KV out of ``pool``. Obligations of the caller: ``reserve`` first;
    ``send`` only after GRANTED, each token range once, in order, starting at a block boundary;
    then ``finish``; keep the source blocks until ACKED (one-sided engines read them until then),
    and call ``settle`` before they are freed or reused for any other reason; ``abort`` a
    transfer it gives up."""

    def __init__(self, pool: KVPool) -> None:
        self.pool = pool

    @abstractmethod
    def reserve(self, dest: str, msg: KVReserve, timeout: float) -> None: ...

    @abstractmethod
    def send(
        self, dest: str, grant: KVGrant, block_table: list[int], start: int, end: int, timeout: float
    ) -> int:
        """Ship every layer's KV of tokens ``[start, end)`` (source blocks ``block_table``) into the
        granted blocks; returns the payload bytes. May return before the bytes left. Raises
        WireError when they cannot be sent at all."""

    @abstractmethod
    def finish(self, dest: str, msg: KVDone, timeout: float) -> None:
        """Send ``msg`` once everything sent before it for the transfer has landed."""

    def settle(self, request_id: str, timeout: float) -> bool:
        """Wait until nothing in flight still reads the transfer's source blocks (False: timed out)."""
        return True

    @abstractmethod
    def abort(self, dest: str, request_id: str, reason: str) -> None:
        """Best effort: tell the receiver to drop the transfer (never raises)."""

    @abstractmethod
    def poll(self, timeout: float) -> list[TransferReply]:
        """Replies that arrived, waiting up to ``timeout`` seconds for the first one."""

    @abstractmethod
    def forget(self, dest: str) -> None:
        """The destination is considered gone: drop whatever is still queued for it."""

    @property
    @abstractmethod
    def sockets(self) -> list[zmq.Socket]:
        """ZMQ sockets that become readable when ``poll`` has something (for the service's poller)."""

    @abstractmethod
    def close(self) -> None: ...


class KVReceiver(ABC):
    """Decode's side. Obligations of the caller: answer every ``KVReserve`` (grant, queued, or
    refuse), ``ack`` after ``KVDone``, ``forget`` a transfer it ends."""

    address: str  # where senders reach this receiver (``PrefillRequest.decode_address``)
    name: str  # named in the errors it sends
    one_sided = False  # True: senders write the KV into the pool; no KVLayer carries it

    @abstractmethod
    def poll(self, timeout: float) -> list[KVInbound]:
        """Messages that arrived, waiting up to ``timeout`` seconds for the first one; malformed
        ones are answered (where the sender is known) or dropped, never returned or raised."""

    @abstractmethod
    def grant(self, request_id: str, blocks: list[int]) -> None:
        """Tell the sender to go ahead: ``blocks`` (reserved, in order) will hold the KV."""

    @abstractmethod
    def queued(self, request_id: str, position: int) -> None: ...

    @abstractmethod
    def refuse(self, request_id: str, kind: ErrorKind, message: str) -> None: ...

    @abstractmethod
    def ack(self, request_id: str) -> None: ...

    @abstractmethod
    def forget(self, request_id: str) -> None: ...

    @property
    @abstractmethod
    def sockets(self) -> list[zmq.Socket]: ...

    @property
    def rejected(self) -> int:
        """Malformed messages received so far."""
        return 0

    @abstractmethod
    def close(self) -> None: ...
