"""prefill <-> decode: moving a prompt's KV cache and the request's state (``shared.transfer``).

One transfer, in order (prefill's DEALER -> decode's ROUTER, replies on the same connection)::

    prefill                          decode
    KVReserve (state, size)   ->                      begin_import when blocks are free
                              <-     KVGrant | KVQueued (then KVGrant later) | KVRefuse
    KVLayer x num_layers      ->                      written into the reserved blocks
    KVDone                    ->                      finish_import: joins the running batch
                              <-     KVAck           prefill frees (or caches) its blocks
    KVAbort (either side gives up; from prefill only, decode answers nothing)

Frames of a ``KVLayer`` are the layer's keys and values ``[L, Hkv, D]`` (L = prompt tokens),
sent without copying. An RDMA engine would keep these control messages and replace ``KVLayer``
by writes into the blocks a grant names.
"""

from __future__ import annotations

import torch

from shared.wire.messages.common import (
    ADDRESS,
    FLOAT_DTYPES,
    MAX_PROMPT_TOKENS,
    MAX_TOKEN_ID,
    REQUEST_ID,
    SOURCE,
    ErrorKind,
)
from shared.wire.messages.prefill import Sampling
from shared.wire.schema import message, rule

MAX_LAYERS = 1024


@message("kv_reserve")
class KVReserve:
    """Ask for room for one sequence; carries everything but the KV (``SequenceState``)."""

    request_id: str = rule(pattern=REQUEST_ID)
    token_ids: list[int] = rule(ge=0, le=MAX_TOKEN_ID, min_len=2, max_len=MAX_PROMPT_TOKENS)
    num_prompt_tokens: int = rule(ge=1, le=MAX_PROMPT_TOKENS)
    mrope_delta: int = rule(ge=-MAX_PROMPT_TOKENS, le=MAX_PROMPT_TOKENS)
    sampling: Sampling  # a seed and the sampled tokens are all of a seeded request's randomness
    num_layers: int = rule(ge=1, le=MAX_LAYERS)
    reply_to: str = rule(pattern=ADDRESS)  # the router's token inbox
    deadline: float = rule(ge=0)  # give up the reservation (and tell prefill) past this time
    source: str = rule(max_len=SOURCE)

    def validate(self) -> None:
        if self.num_prompt_tokens >= len(self.token_ids):
            raise ValueError("a reserved sequence carries at least one sampled token")


@message("kv_grant")
class KVGrant:
    """Room is reserved: send the layers."""

    request_id: str = rule(pattern=REQUEST_ID)


@message("kv_queued")
class KVQueued:
    """No room now; the reservation waits in line (a grant or a refusal follows)."""

    request_id: str = rule(pattern=REQUEST_ID)
    position: int = rule(ge=0)


@message("kv_refuse")
class KVRefuse:
    """No room, now or before the deadline (``overloaded``), or the sequence is unacceptable."""

    request_id: str = rule(pattern=REQUEST_ID)
    kind: ErrorKind
    message: str = rule(max_len=4096)


@message("kv_layer")
class KVLayer:
    request_id: str = rule(pattern=REQUEST_ID)
    layer: int = rule(ge=0, le=MAX_LAYERS)
    keys: torch.Tensor = rule(dtypes=FLOAT_DTYPES, ndim=3)  # [L, Hkv, D]
    values: torch.Tensor = rule(dtypes=FLOAT_DTYPES, ndim=3)  # [L, Hkv, D]

    def validate(self) -> None:
        if self.keys.shape != self.values.shape or self.keys.dtype != self.values.dtype:
            raise ValueError(f"keys {list(self.keys.shape)} and values {list(self.values.shape)} differ")


@message("kv_done")
class KVDone:
    request_id: str = rule(pattern=REQUEST_ID)
    num_layers: int = rule(ge=1, le=MAX_LAYERS)


@message("kv_ack")
class KVAck:
    """Every layer is in decode's pool: prefill may free its copy."""

    request_id: str = rule(pattern=REQUEST_ID)


@message("kv_abort")
class KVAbort:
    request_id: str = rule(pattern=REQUEST_ID)
    reason: str = rule(max_len=1024)
