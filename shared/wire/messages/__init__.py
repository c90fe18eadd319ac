"""Every message exchanged between services, one module per channel.

* ``common``: identifier patterns, limits, ``ErrorKind``, ``StageError`` (any stage -> downstream)
* ``encode``: router -> encoder -> prefill (``EncodeRequest``, ``CacheMiss``, ``ImageEmbeddingResult``)
* ``prefill``: router -> prefill / decode (``PrefillRequest``, ``AbortRequest``)
* ``kv``: prefill <-> decode, the KV transfer (``KVReserve`` ... ``KVAck``)
* ``tokens``: prefill / decode -> router (``TokenBatch``, ``LoadReport``)

Identifiers are validated by pattern; deadlines are absolute Unix times in seconds (``time.time()``),
so every hop can tell whether a request is still worth working on.
"""

from shared.wire.messages.common import (
    ADDRESS,
    CONTENT_HASH,
    FLOAT_DTYPES,
    MAX_GRID,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_INDEX,
    MAX_IMAGES_PER_REQUEST,
    REQUEST_ID,
    ErrorKind,
    StageError,
)
from shared.wire.messages.encode import CacheMiss, EncodeRequest, ImageEmbeddingResult, ImageInput
from shared.wire.messages.kv import KVAbort, KVAck, KVDone, KVGrant, KVLayer, KVQueued, KVRefuse, KVReserve
from shared.wire.messages.prefill import (
    AbortRequest,
    ImagePlacement,
    MRopeSegment,
    PrefillRequest,
    Sampling,
)
from shared.wire.messages.tokens import LoadReport, TokenBatch

__all__ = [
    "ADDRESS",
    "CONTENT_HASH",
    "FLOAT_DTYPES",
    "MAX_GRID",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_INDEX",
    "MAX_IMAGES_PER_REQUEST",
    "REQUEST_ID",
    "AbortRequest",
    "CacheMiss",
    "EncodeRequest",
    "ErrorKind",
    "ImageEmbeddingResult",
    "ImageInput",
    "ImagePlacement",
    "KVAbort",
    "KVAck",
    "KVDone",
    "KVGrant",
    "KVLayer",
    "KVQueued",
    "KVRefuse",
    "KVReserve",
    "LoadReport",
    "MRopeSegment",
    "PrefillRequest",
    "Sampling",
    "StageError",
    "TokenBatch",
]
