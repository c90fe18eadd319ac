"""Engine ``TokenOutput``s of one step, for one router, as the wire's ``TokenBatch``."""

from __future__ import annotations

from shared.engine import FinishReason, TokenOutput
from shared.wire.messages import TokenBatch


def token_batch(source: str, outputs: list[TokenOutput]) -> TokenBatch:
    reasons = [
        "" if o.finish_reason in (None, FinishReason.PREFILLED) else o.finish_reason.value for o in outputs
    ]
    with_lp = any(o.logprob is not None for o in outputs)
    logprobs = [o.logprob for o in outputs] if with_lp else []
    with_top = any(o.top_logprobs for o in outputs)
    tops = [o.top_logprobs or [] for o in outputs] if with_top else []
    return TokenBatch(
        source,
        [o.request_id for o in outputs],
        [o.token_id for o in outputs],
        logprobs,
        reasons,
        [[t for t, _ in top] for top in tops],
        [[lp for _, lp in top] for top in tops],
    )
