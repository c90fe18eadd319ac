"""What enters and leaves the engine: requests, sampling parameters, per-token outputs.

A ``Request`` is everything prefill needs to run one prompt: the token ids, the MRoPE positions
of the prompt (from ``shared.multimodal.mrope``) and the decode delta, and the features of each
image (embeddings, deepstack embeddings, content hash, where its tokens start). The engine checks
it once in ``validate`` and never again. Every step emits one ``TokenOutput`` per sampled token.

Shape legend: T prompt tokens, n tokens of one image, S deepstack levels, H hidden.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property

import torch


class FinishReason(StrEnum):
    STOP = "stop"  # a stop token or the model's end-of-sequence token
    LENGTH = "length"  # max_tokens or the engine's max_model_len
    ABORT = "abort"
    PREFILLED = "prefilled"  # a prefill_only request sampled its first token; its KV awaits export


GREEDY_TEMPERATURE = 1e-5  # below it a row is greedy: logits / 1e-300 would be inf or NaN


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # below GREEDY_TEMPERATURE (0 included): greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    min_p: float = 0.0
    seed: int | None = None  # per-request generator: same seed, same tokens
    max_tokens: int = 16
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; n >= 0: the chosen token's logprob and the top n
    # Tokens an earlier attempt sampled (a migrated request: its prompt ends with them): a seeded
    # request's draws continue from there (``shared.engine.sampler``).
    draw_offset: int = 0
    # OpenAI's penalties on the tokens sampled so far (-2 .. 2), and vLLM's (transformers') repetition
    # penalty on the prompt's and the sampled tokens (> 0; 1: off): ``shared.engine.sampler.penalize``
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    # Until the request has sampled ``min_tokens`` (counting an earlier attempt's), its stop tokens
    # and end-of-sequence tokens cannot be sampled, and nothing stops it but its length (vLLM's).
    min_tokens: int = 0
    # (token id, bias) pairs added to the logits before penalties (OpenAI's logit_bias, -100 .. 100)
    logit_bias: tuple[tuple[int, float], ...] = ()
    # vLLM's: when set, every other token is ruled out (applied with the bias)
    allowed_token_ids: tuple[int, ...] = ()
    # A regular expression the answer must match (``shared.engine.guided``); "": unguided
    guide: str = ""
    # vLLM's bad_words as token sequences: a sequence's last token is ruled out where the answer's
    # last tokens are the rest of it (a one-token word: always)
    bad_words: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or not 0 <= self.min_p <= 1:
            raise ValueError(f"invalid sampling parameters {self}")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if self.logprobs is not None and self.logprobs < 0:
            raise ValueError("logprobs must be >= 0")
        if self.draw_offset < 0:
            raise ValueError("draw_offset must be >= 0")
        if not (
            -2 <= self.presence_penalty <= 2
            and -2 <= self.frequency_penalty <= 2
            and self.repetition_penalty > 0
        ):
            raise ValueError(
                "presence and frequency penalties must be within -2..2, the repetition penalty > 0"
            )
        if not 0 <= self.min_tokens <= self.max_tokens + self.draw_offset:
            raise ValueError("min_tokens must be within 0..max_tokens")
        if any(t < 0 or not -100 <= b <= 100 for t, b in self.logit_bias):
            raise ValueError("logit_bias: token ids >= 0, biases within -100..100")
        if any(t < 0 for t in self.allowed_token_ids):
            raise ValueError("allowed_token_ids must be >= 0")
        if any(not word or min(word) < 0 for word in self.bad_words):
            raise ValueError("bad_words: non-empty token sequences of ids >= 0")

    @cached_property
    def penalized(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1)

    @cached_property
    def plain(self) -> bool:
        """No penalty, bias, allowed set, guide, bad words or ``min_tokens``: the logits are chosen from as they come
        (one attribute the sampler reads per row and step)."""
        return not (
            self.penalized
            or self.logit_bias
            or self.allowed_token_ids
            or self.min_tokens
            or self.guide
            or self.bad_words
        )

    @cached_property
    def bad_words_reach(self) -> int:
        """How many of the answer's last tokens ``bad_words`` look at (0: none)."""
        return max((len(word) - 1 for word in self.bad_words), default=0)

    def steered(self, draws: int) -> bool:
        """Whether the logits need ``logit_bias``, ``allowed_token_ids``, a guide, bad words or ``min_tokens``'s
        mask before this row's ``draws``-th draw (tokens it sampled before, an earlier attempt's included)."""
        return (
            bool(self.logit_bias or self.allowed_token_ids or self.guide or self.bad_words)
            or draws < self.min_tokens
        )

    @property
    def greedy(self) -> bool:
        """Argmax of the (penalised) logits: a temperature too small to divide by (vLLM's 1e-5), or top-k 1."""
        return self.temperature < GREEDY_TEMPERATURE or self.top_k == 1


@dataclass
class ImageInput:
    """One image's features as the encoder produced them, and where its tokens sit in the prompt."""

    embeds: torch.Tensor  # [n, H]
    deepstack: torch.Tensor  # [S, n, H]
    content_hash: str  # two images share prefix-cache entries only if their hashes are equal
    start: int  # index of the image's first token in the prompt

    @property
    def num_tokens(self) -> int:
        return self.embeds.shape[0]

    @property
    def end(self) -> int:
        return self.start + self.num_tokens


def vision_inputs(
    embeds: torch.Tensor, deepstack: torch.Tensor, content_hash: str, runs: list[tuple[int, int]]
) -> list[ImageInput]:
    """One image's or video's features as the engine's inputs: one per run of its tokens.

    An image is one run. A video's temporal groups are separate runs (a timestamp sits between
    them): its rows go to them in equal parts, in order, each keyed apart for the prefix cache."""
    if len(runs) == 1:
        return [ImageInput(embeds, deepstack, content_hash, runs[0][0])]
    size = embeds.shape[0] // len(runs)
    if size * len(runs) != embeds.shape[0] or any(end - start != size for start, end in runs):
        raise ValueError(f"{embeds.shape[0]} feature rows do not split into the runs {runs}")
    return [
        ImageInput(
            embeds[g * size : (g + 1) * size],
            deepstack[:, g * size : (g + 1) * size],
            f"{content_hash}#{g}",
            start,
        )
        for g, (start, _) in enumerate(runs)
    ]


@dataclass
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    positions: torch.Tensor | None = None  # [3, T] int64; None: text only, 0 .. T-1 on every axis
    mrope_delta: int = 0  # decode position of cache index i is i + mrope_delta
    images: list[ImageInput] = field(default_factory=list)  # in prompt order
    prefill_only: bool = False  # stop after the first token and keep the KV for export

    def validate(self, vision_token_ids: Collection[int], num_deepstack_levels: int, hidden: int) -> None:
        """Raise ValueError when the request is inconsistent; the engine then refuses it.

        ``vision_token_ids``: the placeholder ids features replace (image and video pads); each
        ``ImageInput`` covers one run of them (a video comes as one input per temporal group)."""
        t = len(self.prompt_token_ids)
        if t == 0:
            raise ValueError(f"request {self.request_id}: empty prompt")
        if self.positions is not None and tuple(self.positions.shape) != (3, t):
            raise ValueError(
                f"request {self.request_id}: positions {tuple(self.positions.shape)} != (3, {t})"
            )
        if self.positions is None and (self.images or self.mrope_delta):
            raise ValueError(f"request {self.request_id}: a prompt with images needs its MRoPE positions")
        covered = 0
        last_end = 0
        for img in self.images:
            n = img.num_tokens
            if img.start < last_end or img.end > t:
                raise ValueError(f"request {self.request_id}: image spans overlap or leave the prompt")
            if any(tok not in vision_token_ids for tok in self.prompt_token_ids[img.start : img.end]):
                raise ValueError(
                    f"request {self.request_id}: image at {img.start} does not cover image tokens"
                )
            if tuple(img.embeds.shape) != (n, hidden):
                raise ValueError(f"request {self.request_id}: image embeds {tuple(img.embeds.shape)}")
            if tuple(img.deepstack.shape) != (num_deepstack_levels, n, hidden):
                raise ValueError(f"request {self.request_id}: deepstack {tuple(img.deepstack.shape)}")
            covered += n
            last_end = img.end
        if covered != sum(tok in vision_token_ids for tok in self.prompt_token_ids):
            raise ValueError(f"request {self.request_id}: image tokens without image features")


@dataclass
class TokenOutput:
    """One sampled token of one request."""

    request_id: str
    token_id: int
    logprob: float | None = None  # of the chosen token, from the raw logits
    top_logprobs: list[tuple[int, float]] | None = None  # the top n (token, logprob), best first
    finish_reason: FinishReason | None = None
    index: int = 0  # its place among the request's output tokens (0: the first)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
