"""Guided decoding: a request's answer held to a regular expression, token by token.

Owns the checkpoint's vocabulary as bytes, the automata compiled from it (outlines-core's
``Index``, one per expression, kept in a small LRU), and each guided sequence's place in its
automaton (``GuideState``). What the API asks (a JSON schema, any JSON object, a forced tool call)
becomes an expression in the router (``router.structured``); the engine only ever sees the expression
(``SamplingParams.guide``), so prefill and decode, given the same expression and the same tokens,
mask the same tokens.

At each sampling step a guided row may only take the tokens its state allows (the sampler sets the
others to -inf, greedy rows included, before penalties, as vLLM does; the guide wins over
``min_tokens`` where both would leave nothing). The end of sequence is allowed where the expression
is complete, and taken it ends the answer whatever ``ignore_eos`` says (the automaton has no
state after it). The state follows the sequence's tokens
itself (``sync``): a sequence imported by a decode worker, with the first token prefill sampled,
or a migrated one, replays what it has.

The vocabulary: Qwen's tokenizer is byte-level BPE (GPT-2's byte alphabet in ``tokenizer.json``),
so every token's bytes are known exactly; added tokens that are not special (``<tool_call>``) are
their text; special tokens (``<|im_end|>``, image pads) are never allowed, but for the checkpoint's
end of sequence at a complete state. A tokenizer of another kind has no guided decoding here
(``Guides.from_checkpoint`` says why).

Compiling an expression takes about a millisecond at the demo's 576 tokens and seconds at Qwen's
151,936 (2.3 s for a three-field schema, 12.5 s for any JSON object; docs/BENCHMARKS.md), so the
services compile in the background (``Guides.ready``, one compiler thread; outlines-core releases
the GIL while it builds) and admit a guided request once its automaton is there, while the others
run. ``index`` compiles in the caller's thread (the engine's own admission, for direct users).
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from outlines_core import Guide, Index, Vocabulary

log = logging.getLogger(__name__)
_BITS = torch.arange(32, dtype=torch.int32)


class GuideError(ValueError):
    """An expression that cannot guide this vocabulary, or guided decoding unavailable here."""


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet, char -> byte: printable Latin-1 bytes stand for themselves,
    the rest for the code points from 256 up, in byte order."""
    printable = {
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    }
    alphabet, shifted = {}, 0
    for b in range(256):
        if b in printable:
            alphabet[chr(b)] = b
        else:
            alphabet[chr(256 + shifted)] = b
            shifted += 1
    return alphabet


def byte_vocabulary(tokenizer_json: dict) -> dict[bytes, list[int]]:
    """Token bytes -> ids of a byte-level BPE ``tokenizer.json``, special tokens left out."""
    decoder = tokenizer_json.get("decoder") or {}
    kinds = [d.get("type") for d in decoder.get("decoders", [decoder])]
    if "ByteLevel" not in kinds:
        raise GuideError(f"the tokenizer is not byte-level BPE (decoder {kinds}): no guided decoding")
    alphabet = _byte_alphabet()
    added = {t["id"]: t for t in tokenizer_json.get("added_tokens", [])}
    out: dict[bytes, list[int]] = {}
    for token, i in tokenizer_json["model"]["vocab"].items():
        if i in added:
            continue
        try:
            raw = bytes(alphabet[c] for c in token)
        except KeyError:
            raise GuideError(f"token {i} ({token!r}) is outside the byte-level alphabet") from None
        out.setdefault(raw, []).append(i)
    for i, t in added.items():
        if not t.get("special", False):
            out.setdefault(t["content"].encode(), []).append(i)
    return out


class GuideState:
    """One sequence's place in its automaton; ``sync`` it with the sequence's tokens before a step."""

    def __init__(self, index: Index, start: int, eos_token_id: int) -> None:
        """``start``: where the guided tokens begin in the sequence (its first output token)."""
        self.guide = Guide(index)
        self.start, self.eos_token_id = start, eos_token_id
        self.consumed = 0  # tokens from ``start`` the guide has advanced over

    def sync(self, token_ids: Sequence[int]) -> GuideState:
        for token in token_ids[self.start + self.consumed :]:
            if token != self.eos_token_id:  # the end: nothing follows it in the automaton
                self.guide.advance(token, return_tokens=False)
            self.consumed += 1
        return self

    def write_mask(self, words: torch.Tensor) -> None:
        """The tokens this state allows into ``words``, a contiguous CPU int32 row of ``mask_words``:
        bit b of word w is token 32 w + b."""
        self.guide.write_mask_into(words.data_ptr(), words.numel(), words.element_size())


def mask_words(vocab: int) -> int:
    return (vocab + 31) // 32


def banned_tokens(states: Sequence[GuideState], vocab: int, device: torch.device) -> torch.Tensor:
    """[len(states), vocab] bool: the tokens each state does not allow."""
    words = torch.zeros(len(states), mask_words(vocab), dtype=torch.int32)
    for row, state in zip(words, states, strict=True):
        state.write_mask(row)
    bits = (~words[:, :, None] >> _BITS) & 1  # [R, W, 32]: 1 where the state's bit is 0
    return bits.bool().view(len(states), -1)[:, :vocab].to(device)


class Guides:
    """A checkpoint's vocabulary and the automata compiled from it (per expression, LRU)."""

    def __init__(self, vocabulary: dict[bytes, list[int]], eos_token_id: int, cache_size: int = 64) -> None:
        self.eos_token_id = eos_token_id
        self.vocabulary = Vocabulary(eos_token_id, vocabulary)
        self.cache_size = cache_size
        self._indexes: OrderedDict[str, Index] = OrderedDict()
        self._compiling: dict[str, Future[Index]] = {}  # at most cache_size; the oldest dropped first
        self._compiler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guide-compiler")

    @classmethod
    def from_checkpoint(cls, model_dir: Path, eos_token_id: int) -> Guides | None:
        """The checkpoint's (``tokenizer.json``), or None (logged) when it has no guided decoding."""
        try:
            tokenizer = json.loads((Path(model_dir) / "tokenizer.json").read_text())
            return cls(byte_vocabulary(tokenizer), eos_token_id)
        except (OSError, ValueError, KeyError) as e:
            log.warning("no guided decoding for %s: %s", model_dir, e)
            return None

    def ready(self, expression: str) -> bool:
        """Whether ``expression``'s automaton is compiled; if not, its compiling starts (or goes on)
        in the background. GuideError (once) when compiling it failed."""
        if expression in self._indexes:
            return True
        future = self._compiling.get(expression)
        if future is None:
            while len(self._compiling) >= self.cache_size:  # asked for and never looked at again
                self._compiling.pop(next(iter(self._compiling)))
            self._compiling[expression] = self._compiler.submit(self._compile, expression)
            return False
        if not future.done():
            return False
        del self._compiling[expression]
        self._keep(expression, future.result())
        return True

    def index(self, expression: str) -> Index:
        """The automaton of ``expression`` over this vocabulary (compiled now if it must be); GuideError
        when there is none."""
        index = self._indexes.get(expression)
        if index is not None:
            self._indexes.move_to_end(expression)
            return index
        future = self._compiling.pop(expression, None)
        index = future.result() if future is not None else self._compile(expression)
        self._keep(expression, index)
        return index

    def _compile(self, expression: str) -> Index:
        try:
            return Index(expression, self.vocabulary)
        except (ValueError, RuntimeError, TypeError) as e:  # outlines-core's errors for what it cannot build
            raise GuideError(f"the guide's expression cannot be used: {e}") from None

    def _keep(self, expression: str, index: Index) -> None:
        self._indexes[expression] = index
        if len(self._indexes) > self.cache_size:
            self._indexes.popitem(last=False)

    def state(self, expression: str, start: int) -> GuideState:
        return GuideState(self.index(expression), start, self.eos_token_id)
