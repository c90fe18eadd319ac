"""decode/prefill -> router: generated tokens, per step; decode -> router: load reports.

* prefill -> router (PUSH, the request's ``reply_to``): ``TokenBatch`` with the first token, or
  ``StageError``.
* decode -> router (PUSH, each request's ``reply_to``): one ``TokenBatch`` per step and router
  with a token for every request of that router that advanced, or ``StageError``.
* decode -> router (PUSH, ``--report-to``): ``LoadReport`` every interval; it is also the decode
  worker's heartbeat: a router that hears none for a while treats the worker as gone.
"""

from __future__ import annotations

from shared.wire.messages.common import ADDRESS, MAX_TOKEN_ID, REQUEST_ID, SOURCE
from shared.wire.schema import message, rule

MAX_BATCH = 4096
MAX_TOP_LOGPROBS = 20
FINISH_REASONS = ("", "stop", "length", "abort")  # "": the request goes on


@message("token_batch")
class TokenBatch:
    """One token for each listed request; ``logprobs`` is empty or one value per token (None where a
    request did not ask for them); ``top_token_ids`` / ``top_logprobs`` are empty or one list per
    token (empty where a request asked for no top-n), best first; ``finish_reasons`` is "" for a
    request that goes on."""

    source: str = rule(max_len=SOURCE)
    request_ids: list[str] = rule(pattern=REQUEST_ID, min_len=1, max_len=MAX_BATCH)
    token_ids: list[int] = rule(ge=0, le=MAX_TOKEN_ID, min_len=1, max_len=MAX_BATCH)
    logprobs: list[float | None] = rule(max_len=MAX_BATCH)
    finish_reasons: list[str] = rule(max_len=MAX_BATCH)
    top_token_ids: list[list[int]] = rule(ge=0, le=MAX_TOKEN_ID, max_len=MAX_BATCH)
    top_logprobs: list[list[float]] = rule(max_len=MAX_BATCH)

    def validate(self) -> None:
        n = len(self.request_ids)
        if len(self.token_ids) != n or len(self.finish_reasons) != n or len(self.logprobs) not in (0, n):
            raise ValueError("request_ids, token_ids, finish_reasons (and logprobs) differ in length")
        if len(self.top_token_ids) not in (0, n) or len(self.top_logprobs) != len(self.top_token_ids):
            raise ValueError("top_token_ids and top_logprobs must be empty or one list per token")
        for ids, lps in zip(self.top_token_ids, self.top_logprobs, strict=True):
            if len(ids) != len(lps) or len(ids) > MAX_TOP_LOGPROBS:
                raise ValueError(f"a token's top-n lists differ in length or exceed {MAX_TOP_LOGPROBS}")
        if any(r not in FINISH_REASONS for r in self.finish_reasons):
            raise ValueError(f"finish reasons must be among {FINISH_REASONS}")


@message("load_report")
class LoadReport:
    source: str = rule(max_len=SOURCE)
    kv_address: str = rule(pattern=ADDRESS)  # where prefill sends KV (PrefillRequest.decode_address)
    control_address: str = rule(pattern=ADDRESS)  # where the router sends AbortRequest
    running: int = rule(ge=0)  # sequences decoding
    queued: int = rule(ge=0)  # waiting, swapped out, importing or waiting for a grant
    free_blocks: int = rule(ge=0)
    total_blocks: int = rule(ge=1)
    time: float = rule(ge=0)
