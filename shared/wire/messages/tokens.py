"""decode/prefill -> router: generated tokens, per step.

* prefill -> router (PUSH, the request's ``reply_to``): ``TokenBatch`` with the first token, or
  ``StageError``.
* decode -> router (PUSH, each request's ``reply_to``): one ``TokenBatch`` per step and router
  with a record for every request of that router that advanced, or ``StageError``.

A ``TokenBatch`` holds one ``SequenceTokens`` record per sequence. A record carries a list of
tokens (one, or several when a sender coalesces steps) with their logprobs and top-n, the place
of its first token among the sequence's output tokens (``index``: prefill's first token is 0; the
router puts records from prefill and decode, two senders, back in order by it), the
finish reason (None: the request goes on) and the ``StageStamp``s of the stages that produced the
tokens (prefill's first token: the encoders' and its own; decode: the hand-off and queue with its
first token, ``decode`` with its last), which the router assembles into the request's timeline.
"""

from __future__ import annotations

import enum

from shared.wire.messages.common import MAX_PROMPT_TOKENS, MAX_TOKEN_ID, REQUEST_ID, SOURCE, StageStamp
from shared.wire.schema import message, rule, struct

MAX_BATCH = 4096  # records in one batch
MAX_RECORD_TOKENS = 1024  # tokens in one record
MAX_TOP_LOGPROBS = 20
MAX_STAMPS = 64


class FinishReason(enum.StrEnum):
    """Why a request ended; a record of a request that goes on has None."""

    STOP = "stop"  # a stop token or the model's end-of-sequence token
    LENGTH = "length"  # max_tokens or the engine's max_model_len
    ABORT = "abort"


@struct
class SequenceTokens:
    """New tokens of one sequence, oldest first. ``logprobs`` is None when the request did not ask
    for them, else one per token; ``top_token_ids`` / ``top_logprobs`` are empty (no top-n asked)
    or one list per token, best first."""

    request_id: str = rule(pattern=REQUEST_ID)
    token_ids: list[int] = rule(ge=0, le=MAX_TOKEN_ID, min_len=1, max_len=MAX_RECORD_TOKENS)
    logprobs: list[float] | None = rule(default=None, max_len=MAX_RECORD_TOKENS)
    top_token_ids: list[list[int]] = rule(
        ge=0, le=MAX_TOKEN_ID, max_len=MAX_RECORD_TOKENS, default_factory=list
    )
    top_logprobs: list[list[float]] = rule(max_len=MAX_RECORD_TOKENS, default_factory=list)
    finish_reason: FinishReason | None = None
    stamps: list[StageStamp] = rule(max_len=MAX_STAMPS, default_factory=list)
    index: int = rule(ge=0, le=MAX_PROMPT_TOKENS, default=0)  # of its first token among the outputs

    def validate(self) -> None:
        n = len(self.token_ids)
        if self.logprobs is not None and len(self.logprobs) != n:
            raise ValueError(f"{len(self.logprobs)} logprobs for {n} tokens")
        if len(self.top_token_ids) not in (0, n) or len(self.top_logprobs) != len(self.top_token_ids):
            raise ValueError("top_token_ids and top_logprobs must be empty or one list per token")
        for ids, lps in zip(self.top_token_ids, self.top_logprobs, strict=True):
            if len(ids) != len(lps) or len(ids) > MAX_TOP_LOGPROBS:
                raise ValueError(f"a token's top-n lists differ in length or exceed {MAX_TOP_LOGPROBS}")


@message("token_batch")
class TokenBatch:
    """New tokens of several sequences, one record per sequence."""

    source: str = rule(max_len=SOURCE)
    records: list[SequenceTokens] = rule(min_len=1, max_len=MAX_BATCH)

    def validate(self) -> None:
        if len({r.request_id for r in self.records}) != len(self.records):
            raise ValueError("a request has more than one record in the batch")
