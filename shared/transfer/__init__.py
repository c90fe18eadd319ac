"""Moving a sequence's KV cache from a prefill engine to a decode engine, across processes.

``base`` defines the interface (``KVSender`` on the prefill side, ``KVReceiver`` on the decode
side) and its protocol; ``zmq_transfer`` implements it over ZMQ TCP; ``state`` converts between
engine objects and wire messages. An RDMA engine (Mooncake, NIXL) is a second implementation of
the same two classes: the control messages stay, the layer payloads become remote writes.
"""

from shared.transfer.base import KVReceiver, KVSender, ReplyEvent, TransferReply
from shared.transfer.state import (
    reservation,
    sampling_from_wire,
    sampling_to_wire,
    state_from_reservation,
)
from shared.transfer.zmq_transfer import ZmqKVReceiver, ZmqKVSender

__all__ = [
    "KVReceiver",
    "KVSender",
    "ReplyEvent",
    "TransferReply",
    "ZmqKVReceiver",
    "ZmqKVSender",
    "reservation",
    "sampling_from_wire",
    "sampling_to_wire",
    "state_from_reservation",
]
