"""Moving a sequence's KV cache from a prefill engine to a decode engine, across processes.

``base`` defines the interface (``KVSender`` on the prefill side, ``KVReceiver`` on the decode
side) and its protocol; ``zmq_transfer`` implements it over ZMQ TCP; ``mooncake`` over Mooncake's
Transfer Engine (one-sided writes into the decode pool, TCP or RDMA; control stays on ZMQ);
``config`` holds the ``--kv-transfer`` flags and builds either; ``state`` converts between engine
objects and wire messages.
"""

from shared.transfer.base import KVReceiver, KVSender, ReplyEvent, TransferReply
from shared.transfer.config import TransferConfig, build_receiver, build_sender
from shared.transfer.mooncake import MooncakeKVReceiver, MooncakeKVSender
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
    "MooncakeKVReceiver",
    "MooncakeKVSender",
    "ReplyEvent",
    "TransferConfig",
    "TransferReply",
    "ZmqKVReceiver",
    "ZmqKVSender",
    "build_receiver",
    "build_sender",
    "reservation",
    "sampling_from_wire",
    "sampling_to_wire",
    "state_from_reservation",
]
