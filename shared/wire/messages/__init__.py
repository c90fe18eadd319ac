"""Every message exchanged between services, one module per channel.

* ``common``: identifier patterns, limits, ``ErrorKind``, ``Stage``, ``StageError`` (any stage ->
  downstream), the timeline's ``StageStamp`` and ``TraceContext``
* ``encode``: router -> encoder -> prefill (``EncodeRequest``, ``CacheMiss``, ``ImageEmbeddingResult``)
* ``prefill``: router -> prefill / decode (``PrefillRequest``, ``AbortRequest``)
* ``kv``: prefill <-> decode, the KV transfer (``KVReserve`` ... ``KVAck``)
* ``tokens``: prefill / decode -> router (``TokenBatch`` of ``SequenceTokens`` records, ``FinishReason``)
* ``cluster``: workers -> routers (``LoadReport``: registration, heartbeat, state), routers -> workers
  (``RouterHeartbeat``)

Identifiers are validated by pattern; deadlines are absolute Unix times in seconds (``time.time()``),
so every hop can tell whether a request is still worth working on.
"""

from shared.wire.messages.cluster import LoadReport, RouterHeartbeat, WorkerState
from shared.wire.messages.common import (
    ADDRESS,
    CONTENT_HASH,
    FLOAT_DTYPES,
    MAX_GRID,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_INDEX,
    MAX_IMAGES_PER_REQUEST,
    REQUEST_ID,
    STAGE_NAME,
    ErrorKind,
    Stage,
    StageError,
    StageStamp,
    TraceContext,
)
from shared.wire.messages.encode import CacheMiss, EncodeRequest, ImageEmbeddingResult, ImageInput, VideoSpec
from shared.wire.messages.kv import (
    KVAbort,
    KVAck,
    KVDone,
    KVGrant,
    KVLayer,
    KVProgress,
    KVQueued,
    KVRefuse,
    KVRegion,
    KVReserve,
)
from shared.wire.messages.prefill import (
    AbortRequest,
    ImagePlacement,
    MRopeSegment,
    PrefillRequest,
    Sampling,
)
from shared.wire.messages.tokens import FinishReason, SequenceTokens, TokenBatch

__all__ = [
    "ADDRESS",
    "CONTENT_HASH",
    "FLOAT_DTYPES",
    "MAX_GRID",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_INDEX",
    "MAX_IMAGES_PER_REQUEST",
    "REQUEST_ID",
    "STAGE_NAME",
    "AbortRequest",
    "CacheMiss",
    "EncodeRequest",
    "ErrorKind",
    "FinishReason",
    "ImageEmbeddingResult",
    "ImageInput",
    "ImagePlacement",
    "KVAbort",
    "KVAck",
    "KVDone",
    "KVGrant",
    "KVLayer",
    "KVProgress",
    "KVQueued",
    "KVRefuse",
    "KVRegion",
    "KVReserve",
    "LoadReport",
    "MRopeSegment",
    "PrefillRequest",
    "RouterHeartbeat",
    "Sampling",
    "SequenceTokens",
    "Stage",
    "StageError",
    "StageStamp",
    "TokenBatch",
    "TraceContext",
    "VideoSpec",
    "WorkerState",
]
