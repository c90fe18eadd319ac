"""Engine ``TokenOutput``s for one router, one record per request (one step's token, or several
coalesced by the decode worker's ``--stream-interval``), as the wire's ``TokenBatch``."""

from __future__ import annotations

from shared.engine import FinishReason as EngineFinish
from shared.engine import TokenOutput
from shared.wire.messages import FinishReason, SequenceTokens, StageStamp, TokenBatch


def finish_reason(reason: EngineFinish | None) -> FinishReason | None:
    """The reason the router sees: ``prefilled`` is no end for it (decode goes on)."""
    if reason is None or reason is EngineFinish.PREFILLED:
        return None
    return FinishReason(reason.value)


def sequence_tokens(outs: list[TokenOutput], stamps: list[StageStamp] | None = None) -> SequenceTokens:
    """One record for a request's consecutive tokens ``outs`` (oldest first, the last may finish it)."""
    tops = [o.top_logprobs or [] for o in outs]
    return SequenceTokens(
        outs[0].request_id,
        [o.token_id for o in outs],
        None if outs[0].logprob is None else [o.logprob or 0.0 for o in outs],
        [[t for t, _ in top] for top in tops] if tops[0] else [],
        [[lp for _, lp in top] for top in tops] if tops[0] else [],
        finish_reason(outs[-1].finish_reason),
        stamps or [],
        outs[0].index,
    )


def token_batch(
    source: str, records: list[list[TokenOutput]], stamps: dict[str, list[StageStamp]] | None = None
) -> TokenBatch:
    """One record per request, of its tokens in ``records``; ``stamps``: the stages each request's
    tokens went through since its last record."""
    stamps = stamps or {}
    return TokenBatch(source, [sequence_tokens(outs, stamps.get(outs[0].request_id)) for outs in records])
