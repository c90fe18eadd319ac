"""The answers a service gives to what it will not take: ``StageError(bad_request)`` for a message
that failed decoding or validation, ``StageError(overloaded)`` for a peer over its in-flight limit.

Where each goes: on a ROUTER, to the sender's identity (``WireError.peer``); on a PULL, nowhere
unless the message named where its answer goes and got far enough to be trusted (the service's
call); either way the service counts and logs it. The request id is echoed only when it is a valid
one, so that the reply itself always encodes.
"""

from __future__ import annotations

import re

from shared.wire.errors import WireError
from shared.wire.messages import REQUEST_ID, ErrorKind, Stage, StageError

MAX_TEXT = 4096


def valid_request_id(request_id: str | None) -> str | None:
    return request_id if request_id is not None and re.fullmatch(REQUEST_ID, request_id) else None


def malformed(e: WireError, source: str, stage: Stage) -> StageError:
    """The ``bad_request`` answer to a message that raised ``e`` when it was received."""
    text = f"malformed message: {e}"[:MAX_TEXT]
    return StageError(valid_request_id(e.request_id), None, ErrorKind.BAD_REQUEST, text, source[:256], stage)


def overloaded(request_id: str, held: int, source: str, stage: Stage) -> StageError:
    """The answer to a request beyond its peer's in-flight limit (``shared.wire.inflight``)."""
    text = f"this peer has {held} requests in flight here, the most allowed (--max-inflight-per-peer)"
    return StageError(valid_request_id(request_id), None, ErrorKind.OVERLOADED, text, source[:256], stage)
