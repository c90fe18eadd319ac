"""The wire protocol: every message exchanged between services, its codec and typed sockets.

``messages`` declares the types, ``codec`` turns them into frames and back (validating everything
inbound), ``sockets`` wraps ZMQ so that services send and receive messages, never frames.
"""

from shared.wire.codec import PROTOCOL_VERSION, decode, encode
from shared.wire.errors import WireError, WireTimeout
from shared.wire.messages import (
    CacheMiss,
    EncodeRequest,
    ErrorKind,
    ImageEmbeddingResult,
    ImageInput,
    Stage,
    StageError,
)
from shared.wire.sockets import DealerSocket, PullSocket, PushPool, PushSocket, RouterSocket

__all__ = [
    "PROTOCOL_VERSION",
    "CacheMiss",
    "DealerSocket",
    "EncodeRequest",
    "ErrorKind",
    "ImageEmbeddingResult",
    "ImageInput",
    "PullSocket",
    "PushPool",
    "PushSocket",
    "RouterSocket",
    "Stage",
    "StageError",
    "WireError",
    "WireTimeout",
    "decode",
    "encode",
]
