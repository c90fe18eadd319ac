"""What every channel shares: identifier patterns, limits, error kinds, stages, ``StageError``, and
the timeline's ``StageStamp`` and ``TraceContext``."""

from __future__ import annotations

import enum
import re

from shared.wire.schema import message, rule, struct

REQUEST_ID = r"[A-Za-z0-9._:@-]{1,128}"
CONTENT_HASH = r"[0-9a-f]{64}"  # SHA-256 hex of the raw image bytes (shared.multimodal.image.image_hash)
ADDRESS = r"(tcp://[A-Za-z0-9.\-\[\]:*]{1,253}:[0-9]{1,5}|ipc://[^\s]{1,200}|inproc://[^\s]{1,200})"
MAX_IMAGES_PER_REQUEST = 256
MAX_IMAGE_INDEX = 4095
MAX_IMAGE_BYTES = 64 << 20
MAX_VIDEO_FRAMES = 4096  # sampled frames of one video (Qwen3-VL samples at most 768 by default)
MAX_VIDEO_SOURCE_FRAMES = 1 << 22  # frames in one video file
MAX_GRID = 1 << 16
FLOAT_DTYPES = ("float32", "bfloat16", "float16")
MAX_PROMPT_TOKENS = 1 << 20
MAX_TOKEN_ID = (1 << 31) - 1
SOURCE = 256  # max length of a service's name in messages
STAGE_NAME = r"[a-z][a-z0-9_]{0,63}"  # a stage in timings (``StageStamp``): "prefill", "kv_transfer"
# W3C trace context: version-traceid-parentid-flags (https://www.w3.org/TR/trace-context/)
TRACEPARENT = r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}"


class ErrorKind(enum.StrEnum):
    BAD_REQUEST = "bad_request"  # the message itself was malformed or inconsistent
    BAD_IMAGE = "bad_image"  # the image bytes cannot be decoded or are out of limits
    DEADLINE_EXCEEDED = "deadline_exceeded"
    OVERLOADED = "overloaded"
    INTERNAL = "internal"
    ABORTED = "aborted"
    # No token of the request left prefill for the client from a decode worker: the KV never
    # reached one (refused, full, gone). The router may run the request again elsewhere.
    UNAVAILABLE = "unavailable"


class Stage(enum.StrEnum):
    """The stages a request passes through; ``StageError.stage`` names the one that failed."""

    ROUTER = "router"
    ENCODER = "encoder"
    PREFILL = "prefill"
    DECODE = "decode"


# ----- shared ----------------------------------------------------------------------------------------
@message("stage_error")
class StageError:
    """A stage could not do its part of a request (or of one image of it), delivered where that
    part's result would have gone. ``request_id`` is None only when the message that failed did
    not reveal one; ``image_index`` is None when the whole request failed.

    ``stage`` is the stage whose part failed, as the sender judges it: its own, except where it
    relays or detects another's failure (prefill reports ``decode`` for a KV transfer the decode
    worker refused or left unanswered, and relays an encoder's ``encoder``). The router picks the
    worker to avoid on a retry from it, never from the text."""

    request_id: str | None = rule(pattern=REQUEST_ID)
    image_index: int | None = rule(ge=0, le=MAX_IMAGE_INDEX)
    kind: ErrorKind
    message: str = rule(max_len=4096)
    source: str = rule(max_len=256)  # which service reported it, e.g. "encoder@tcp://10.0.0.5:5600"
    stage: Stage


# ----- the request's timeline (shared.timeline) --------------------------------------------------------
@struct
class StageStamp:
    """A stage (``shared.timeline.StageName``) of one request, as the service that owns it measured
    it: ``start`` on the request's clock (seconds, the router's wall clock: see ``TraceContext``),
    ``duration`` on the stamping service's monotonic clock."""

    stage: str = rule(pattern=STAGE_NAME)
    start: float = rule(ge=0)
    duration: float = rule(ge=0)


@struct
class TraceContext:
    """Carried by each message that starts work on a request in another service (encode, prefill,
    KV reserve). ``clock`` is the sender's reading of the request's clock when it sent the message:
    the receiver pins it to its monotonic clock, so its stamps need no agreement between wall
    clocks. ``traceparent`` is the W3C trace context of the request's trace, empty when it is not
    traced (OpenTelemetry off at the router)."""

    traceparent: str = rule(max_len=55)
    clock: float = rule(ge=0)

    def validate(self) -> None:
        if self.traceparent and not re.fullmatch(TRACEPARENT, self.traceparent):
            raise ValueError(f"traceparent {self.traceparent!r} is not a W3C trace context")
