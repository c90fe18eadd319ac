"""``services.common.tokens``: engine outputs -> one wire record per request, several tokens in a
record when the decode worker coalesces steps (``--stream-interval``)."""

from __future__ import annotations

import pytest

from services.common.tokens import token_batch
from shared.engine import FinishReason as EngineFinish
from shared.engine import TokenOutput
from shared.wire import decode, encode
from shared.wire.messages import FinishReason, StageStamp

pytestmark = pytest.mark.unit


def test_a_record_holds_a_requests_coalesced_tokens_in_order() -> None:
    a = [
        TokenOutput("a", t, -0.5 * i, [(t, -0.5 * i), (9, -3.0)], index=4 + i)
        for i, t in enumerate((5, 6, 7))
    ]
    a[-1].finish_reason = EngineFinish.LENGTH
    b = [TokenOutput("b", 8)]
    stamp = StageStamp("decode", 1.7e9, 0.2)
    batch = decode(encode(token_batch("decode-0", [a, b], {"a": [stamp]})))
    ra, rb = batch.records
    assert (ra.request_id, ra.token_ids, ra.logprobs) == ("a", [5, 6, 7], [0.0, -0.5, -1.0])
    assert ra.top_token_ids == [[5, 9], [6, 9], [7, 9]] and ra.top_logprobs[2] == [-1.0, -3.0]
    assert ra.finish_reason is FinishReason.LENGTH and [s.stage for s in ra.stamps] == ["decode"]
    assert (ra.index, rb.index) == (4, 0)  # the place of a record's first token among the outputs
    assert (rb.token_ids, rb.logprobs, rb.top_token_ids, rb.finish_reason, rb.stamps) == (
        [8],
        None,
        [],
        None,
        [],
    )


def test_prefilled_is_no_finish_for_the_router() -> None:
    out = TokenOutput("a", 5, finish_reason=EngineFinish.PREFILLED)
    assert token_batch("prefill-0", [[out]]).records[0].finish_reason is None
