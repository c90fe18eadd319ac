"""A request's controls over single tokens: ``logit_bias``, ``min_tokens``, ``stop_token_ids``,
``allowed_token_ids``.

OpenAI's ``logit_bias`` maps token ids (JSON keys, so strings) to a number added to their logits;
as in vLLM a bias outside -100..100 is clamped there, and an id outside the model's vocabulary is
a 400. vLLM's ``min_tokens`` holds back the stop tokens, the end-of-sequence tokens and the stop
strings until that many tokens are out; it may not exceed the answer's length. vLLM's
``stop_token_ids`` end the answer like the end-of-sequence token does, ``ignore_eos`` or not.
vLLM's ``allowed_token_ids``, when given (not empty), are the only tokens the answer may hold.
vLLM's ``bad_words`` are words the answer may not write: each becomes its tokens as it would be
written at the start of the text and after a space (two sequences where they differ), and the
engine rules out a sequence's last token where the answer ends with the rest of it.
Everything here is checked against what the wire carries (``shared.wire.messages.prefill``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from router.protocol import SamplingFields, bad_request
from shared.wire.messages.prefill import MAX_BAD_WORD_TOKENS, MAX_BAD_WORDS, MAX_LOGIT_BIAS, MAX_STOP_TOKENS

BIAS_LIMIT = 100.0


@dataclass(frozen=True)
class TokenControls:
    stop_token_ids: tuple[int, ...]  # the request's own and, unless it ignores EOS, the model's
    min_tokens: int
    logit_bias: tuple[tuple[int, float], ...]
    allowed_token_ids: tuple[int, ...] = ()


def token_controls(
    req: SamplingFields, vocab_size: int, max_tokens: int, eos_ids: tuple[int, ...]
) -> TokenControls:
    """The request's token controls, checked; ``max_tokens``: the answer's length as resolved."""
    if req.min_tokens > max_tokens:
        raise bad_request(
            f"min_tokens ({req.min_tokens}) must not exceed max_tokens ({max_tokens})", "min_tokens"
        )
    stops = list(dict.fromkeys(req.stop_token_ids or []))
    if any(not 0 <= t < vocab_size for t in stops):
        raise bad_request(f"stop_token_ids: token ids within 0..{vocab_size - 1}", "stop_token_ids")
    if not req.ignore_eos:
        stops += [t for t in eos_ids if t not in stops]
    if len(stops) > MAX_STOP_TOKENS:
        raise bad_request(
            f"stop_token_ids: at most {MAX_STOP_TOKENS} with the model's end-of-sequence tokens",
            "stop_token_ids",
        )
    allowed = tuple(dict.fromkeys(req.allowed_token_ids or []))
    if any(not 0 <= t < vocab_size for t in allowed):
        raise bad_request(f"allowed_token_ids: token ids within 0..{vocab_size - 1}", "allowed_token_ids")
    return TokenControls(tuple(stops), req.min_tokens, _logit_bias(req.logit_bias or {}, vocab_size), allowed)


def _logit_bias(raw: dict[str, float], vocab_size: int) -> tuple[tuple[int, float], ...]:
    if len(raw) > MAX_LOGIT_BIAS:
        raise bad_request(f"logit_bias: at most {MAX_LOGIT_BIAS} tokens", "logit_bias")
    out: dict[int, float] = {}
    for key, bias in raw.items():
        try:
            token = int(key)
        except ValueError:
            raise bad_request(f"logit_bias: {key!r} is not a token id", "logit_bias") from None
        if not 0 <= token < vocab_size:
            raise bad_request(
                f"logit_bias: token id {token} is outside the vocabulary (0..{vocab_size - 1})", "logit_bias"
            )
        if not math.isfinite(bias):
            raise bad_request(f"logit_bias: the bias of token {token} is not a finite number", "logit_bias")
        out[token] = min(BIAS_LIMIT, max(-BIAS_LIMIT, bias))  # "007" and "7" are one token: the last wins
    return tuple(out.items())


def bad_words(req: SamplingFields, tokenizer: Any) -> tuple[tuple[int, ...], ...]:
    """The token sequences of the request's ``bad_words``: each word without its leading spaces,
    alone and after one space (both where they differ)."""
    out: list[tuple[int, ...]] = []
    for word in req.bad_words or []:
        word = word.lstrip()
        if not word:
            raise bad_request("bad_words: empty words are not words", "bad_words")
        for text in (word, " " + word):
            ids = tuple(tokenizer.encode(text, add_special_tokens=False))
            if ids and ids not in out:
                out.append(ids)
    if len(out) > MAX_BAD_WORDS or sum(map(len, out)) > MAX_BAD_WORD_TOKENS:
        raise bad_request(
            f"bad_words: at most {MAX_BAD_WORDS} token sequences of {MAX_BAD_WORD_TOKENS} tokens in all",
            "bad_words",
        )
    return tuple(out)
