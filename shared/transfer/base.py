"""The KV transfer interface: what prefill and decode services call, whatever moves the bytes.

Protocol of one transfer (see ``shared.wire.messages.kv`` for the messages)::

    sender.reserve(dest, KVReserve)      receiver.poll() -> KVReserve
                                         receiver.grant / queued / refuse
    sender.poll() -> TransferReply: ReplyEvent GRANTED | QUEUED (GRANTED later) | REFUSED
    sender.send_layer(...) x num_layers  receiver.poll() -> KVLayer (each)
    sender.finish(...)                   receiver.poll() -> KVDone; receiver.ack
    sender.poll() -> ReplyEvent.ACKED    (the sender may now free its blocks)

Either side may give up: ``sender.abort`` reaches the receiver as ``KVAbort``; a receiver that
gives up answers ``refuse`` (before the layers) or simply never acks: the sender's deadline
catches it. Nothing here waits without a timeout, and neither side ever trusts the other to be
alive: the service loops own the deadlines.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import zmq

from shared.wire.messages import ErrorKind, KVAbort, KVDone, KVLayer, KVReserve

KVInbound = KVReserve | KVLayer | KVDone | KVAbort


class ReplyEvent(enum.StrEnum):
    """What a receiver answered about one transfer."""

    GRANTED = "granted"  # room reserved: send the layers
    QUEUED = "queued"  # no room yet: a grant or a refusal follows
    REFUSED = "refused"  # no room before the deadline, or the transfer is unacceptable
    ACKED = "acked"  # every layer is stored: the sender may free its copy


@dataclass(frozen=True)
class TransferReply:
    """What the sender learned about one transfer."""

    request_id: str
    event: ReplyEvent
    kind: ErrorKind | None = None  # refused: why
    message: str = ""


class KVSender(ABC):
    """Prefill's side. Obligations of the caller: ``reserve`` first; send layers only after
    GRANTED, every layer exactly once, then ``finish``; keep the source KV until ACKED (an RDMA
    engine reads the prefill pool directly until then); ``abort`` a transfer it gives up."""

    @abstractmethod
    def reserve(self, dest: str, msg: KVReserve, timeout: float) -> None: ...

    @abstractmethod
    def send_layer(
        self, dest: str, request_id: str, layer: int, keys: torch.Tensor, values: torch.Tensor, timeout: float
    ) -> int:
        """Queue one layer ``[L, Hkv, D]`` for sending; returns the payload bytes. May return before
        the bytes left (the tensors are kept alive until then)."""

    @abstractmethod
    def finish(self, dest: str, request_id: str, num_layers: int, timeout: float) -> None: ...

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
    refuse), ``ack`` after the last layer is stored, ``forget`` a transfer it ends."""

    address: str  # where senders reach this receiver (``PrefillRequest.decode_address``)

    @abstractmethod
    def poll(self, timeout: float) -> list[KVInbound]:
        """Messages that arrived, waiting up to ``timeout`` seconds for the first one; malformed
        ones are answered (where the sender is known) or dropped, never returned or raised."""

    @abstractmethod
    def grant(self, request_id: str) -> None: ...

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
