"""Engine ``TokenOutput``s of one step, for one router, as the wire's ``TokenBatch``."""

from __future__ import annotations

from shared.engine import FinishReason as EngineFinish
from shared.engine import TokenOutput
from shared.wire.messages import FinishReason, SequenceTokens, StageStamp, TokenBatch


def finish_reason(reason: EngineFinish | None) -> FinishReason | None:
    """The reason the router sees: ``prefilled`` is no end for it (decode goes on)."""
    if reason is None or reason is EngineFinish.PREFILLED:
        return None
    return FinishReason(reason.value)


def sequence_tokens(out: TokenOutput, stamps: list[StageStamp] | None = None) -> SequenceTokens:
    top = out.top_logprobs or []
    return SequenceTokens(
        out.request_id,
        [out.token_id],
        None if out.logprob is None else [out.logprob],
        [[t for t, _ in top]] if top else [],
        [[lp for _, lp in top]] if top else [],
        finish_reason(out.finish_reason),
        stamps or [],
    )


def token_batch(
    source: str, outputs: list[TokenOutput], stamps: dict[str, list[StageStamp]] | None = None
) -> TokenBatch:
    """``stamps``: the stages each request's tokens went through since its last record."""
    stamps = stamps or {}
    return TokenBatch(source, [sequence_tokens(o, stamps.get(o.request_id)) for o in outputs])
