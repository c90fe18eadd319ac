"""prefill <-> decode: moving a prompt's KV cache and the request's state (``shared.transfer``).

One transfer, in order (prefill's DEALER -> decode's ROUTER, replies on the same connection)::

    prefill                            decode
    KVReserve (prompt, size)    ->                      begin_import when blocks are free
                                <-     KVGrant (block ids, region) | KVQueued (KVGrant later) | KVRefuse
    KVLayer x layers per chunk  ->                      written into the reserved blocks (zmq)
      or one-sided writes into the granted blocks, then KVProgress (mooncake)
    KVDone (sampled tokens)     ->                      finish_import: joins the running batch
                                <-     KVAck           prefill frees (or caches) its blocks
    KVAbort (either side gives up; from prefill only, decode answers nothing)

Layer-pipelined: prefill reserves as soon as a prompt's first chunk is computed, before its first
token is sampled, and ships the KV of every completed block after each engine step, while later
chunks compute. The first sampled token(s), and with them the sampler's state (a seed and the
count of draws), travel last, in ``KVDone``.

Frames of a ``KVLayer`` are one layer's keys and values for tokens ``[start, start + n)``, sent
without copying. Under Mooncake the grant also names the decode pool's registered region, and
prefill writes whole blocks straight into it; ``KVProgress`` is then the only sign of life
between grant and done.
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
    TraceContext,
)
from shared.wire.messages.prefill import Sampling
from shared.wire.schema import message, rule, struct

MAX_LAYERS = 1024


@message("kv_reserve")
class KVReserve:
    """Ask for room for one sequence whose KV covers ``token_ids`` (the prompt); decode reserves
    blocks for those tokens and the first sampled one."""

    request_id: str = rule(pattern=REQUEST_ID)
    token_ids: list[int] = rule(ge=0, le=MAX_TOKEN_ID, min_len=1, max_len=MAX_PROMPT_TOKENS)
    num_prompt_tokens: int = rule(ge=1, le=MAX_PROMPT_TOKENS)
    mrope_delta: int = rule(ge=-MAX_PROMPT_TOKENS, le=MAX_PROMPT_TOKENS)
    sampling: Sampling  # a seed and the sampled tokens are all of a seeded request's randomness
    num_layers: int = rule(ge=1, le=MAX_LAYERS)
    reply_to: str = rule(pattern=ADDRESS)  # the router's token inbox
    deadline: float = rule(ge=0)  # give up the reservation (and tell prefill) past this time
    source: str = rule(max_len=SOURCE)
    trace: TraceContext | None = None  # the request's clock and trace, handed on from prefill

    def validate(self) -> None:
        if self.num_prompt_tokens > len(self.token_ids):
            raise ValueError("num_prompt_tokens exceeds the tokens whose KV is reserved")


@struct
class KVRegion:
    """Where a one-sided engine (Mooncake) writes: the decode pool as registered at start.

    Block ``b`` of layer ``l`` starts at ``k_base + l * layer_stride + b * block_bytes`` (keys;
    values alike from ``v_base``); a block is ``block_size`` tokens of ``[Hkv, D]``."""

    session: str = rule(max_len=256)  # the transfer engine's address, host:port
    k_base: int = rule(ge=0, le=(1 << 64) - 1)
    v_base: int = rule(ge=0, le=(1 << 64) - 1)
    layer_stride: int = rule(ge=1, le=1 << 48)
    block_bytes: int = rule(ge=1, le=1 << 32)
    block_size: int = rule(ge=1, le=1 << 16)
    num_blocks: int = rule(ge=1, le=1 << 32)


@message("kv_grant")
class KVGrant:
    """Room is reserved: these blocks, in order, will hold the sequence's KV. ``region`` is set when
    the receiver takes one-sided writes."""

    request_id: str = rule(pattern=REQUEST_ID)
    blocks: list[int] = rule(ge=0, le=1 << 32, max_len=MAX_PROMPT_TOKENS, default_factory=list)
    region: KVRegion | None = rule(default=None)


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
    """One layer's KV of tokens ``[start, start + n)`` (layers of a sequence arrive in token order)."""

    request_id: str = rule(pattern=REQUEST_ID)
    layer: int = rule(ge=0, le=MAX_LAYERS)
    keys: torch.Tensor = rule(dtypes=FLOAT_DTYPES, ndim=3)  # [n, Hkv, D]
    values: torch.Tensor = rule(dtypes=FLOAT_DTYPES, ndim=3)  # [n, Hkv, D]
    start: int = rule(ge=0, le=MAX_PROMPT_TOKENS, default=0)

    def validate(self) -> None:
        if self.keys.shape != self.values.shape or self.keys.dtype != self.values.dtype:
            raise ValueError(f"keys {list(self.keys.shape)} and values {list(self.values.shape)} differ")


@message("kv_progress")
class KVProgress:
    """One-sided writes of the first ``num_tokens`` tokens' KV have landed (a heartbeat too)."""

    request_id: str = rule(pattern=REQUEST_ID)
    num_tokens: int = rule(ge=0, le=MAX_PROMPT_TOKENS)


@message("kv_done")
class KVDone:
    """Every layer is sent (and, one-sided, landed); ``sampled``: the tokens prefill sampled after
    the reserved ones (the first token), which the sequence continues from."""

    request_id: str = rule(pattern=REQUEST_ID)
    num_layers: int = rule(ge=1, le=MAX_LAYERS)
    sampled: list[int] = rule(ge=0, le=MAX_TOKEN_ID, min_len=1, max_len=64)


@message("kv_ack")
class KVAck:
    """Every layer is in decode's pool: prefill may free its copy."""

    request_id: str = rule(pattern=REQUEST_ID)


@message("kv_abort")
class KVAbort:
    request_id: str = rule(pattern=REQUEST_ID)
    reason: str = rule(max_len=1024)
