"""Engine objects <-> wire messages of the transfer: sampling parameters and sequence state."""

from __future__ import annotations

import itertools

from shared.engine import SamplingParams, SequenceState
from shared.wire.messages import KVReserve, Sampling, TraceContext


def sampling_to_wire(p: SamplingParams) -> Sampling:
    return Sampling(
        p.temperature, p.top_p, p.top_k, p.min_p, p.seed, p.max_tokens, list(p.stop_token_ids),
        p.ignore_eos, p.logprobs, p.draw_offset, p.presence_penalty, p.frequency_penalty, p.repetition_penalty,
        p.min_tokens, [t for t, _ in p.logit_bias], [b for _, b in p.logit_bias], list(p.allowed_token_ids),
        p.guide, [t for word in p.bad_words for t in word], [len(word) for word in p.bad_words],
    )  # fmt: skip


def sampling_from_wire(s: Sampling) -> SamplingParams:
    """Raises ValueError for values the engine refuses."""
    return SamplingParams(
        s.temperature, s.top_p, s.top_k, s.min_p, s.seed, s.max_tokens, tuple(s.stop_token_ids),
        s.ignore_eos, s.logprobs, s.draw_offset, s.presence_penalty, s.frequency_penalty, s.repetition_penalty,
        s.min_tokens, tuple(zip(s.bias_token_ids, s.bias_values, strict=True)), tuple(s.allowed_token_ids),
        s.guide, _words(s.bad_word_ids, s.bad_word_lengths),
    )  # fmt: skip


def _words(ids: list[int], lengths: list[int]) -> tuple[tuple[int, ...], ...]:
    ends = list(itertools.accumulate(lengths))
    return tuple(tuple(ids[end - n : end]) for n, end in zip(lengths, ends, strict=True))


def reservation(
    state: SequenceState,
    num_layers: int,
    reply_to: str,
    deadline: float,
    source: str,
    trace: TraceContext | None = None,
) -> KVReserve:
    return KVReserve(
        state.request_id, list(state.token_ids), state.num_prompt_tokens, state.mrope_delta,
        sampling_to_wire(state.params), num_layers, reply_to, deadline, source, trace,
    )  # fmt: skip


def state_from_reservation(msg: KVReserve) -> SequenceState:
    return SequenceState(
        msg.request_id,
        list(msg.token_ids),
        msg.num_prompt_tokens,
        msg.mrope_delta,
        sampling_from_wire(msg.sampling),
    )
