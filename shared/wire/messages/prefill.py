"""router -> prefill and router -> decode: running a prompt, and aborting a request.

* router -> prefill (DEALER -> ROUTER): ``PrefillRequest``, ``AbortRequest``; a message that fails
  validation is answered with ``StageError(bad_request)`` on the same socket.
* router -> decode (PUSH -> PULL, the decode worker's control port): ``AbortRequest``.

The prompt's MRoPE layout travels as its segments (``shared.multimodal.mrope.Segment``): a few
numbers per text run or image instead of 3 positions per token.
"""

from __future__ import annotations

from shared.wire.messages.common import (
    ADDRESS,
    CONTENT_HASH,
    MAX_GRID,
    MAX_IMAGE_INDEX,
    MAX_IMAGES_PER_REQUEST,
    MAX_PROMPT_TOKENS,
    MAX_TOKEN_ID,
    MAX_VIDEO_FRAMES,
    REQUEST_ID,
    SOURCE,
    TraceContext,
)
from shared.wire.schema import message, rule, struct

MAX_STOP_TOKENS = 64
MAX_LOGIT_BIAS = 1024  # token ids a request may bias
MAX_ALLOWED_TOKENS = 1 << 18  # a request's allowed_token_ids (any vocabulary is smaller)
MAX_GUIDE_CHARS = 1 << 18  # a guided request's regular expression (within the 1 MiB header)
MAX_BAD_WORDS = 128  # token sequences of a request's bad_words (a word gives one or two)
MAX_BAD_WORD_TOKENS = 2048  # their tokens, all together
# A video adds a text run and a vision run per temporal group (a timestamp before each group).
MAX_SEGMENTS = 2 * MAX_IMAGES_PER_REQUEST + 2 * MAX_VIDEO_FRAMES + 1


@struct
class Sampling:
    """``shared.engine.SamplingParams`` on the wire (the engine re-checks the values)."""

    temperature: float = rule(ge=0, le=100)
    top_p: float = rule(ge=0, le=1)
    top_k: int = rule(ge=0, le=MAX_TOKEN_ID)
    min_p: float = rule(ge=0, le=1)
    seed: int | None = rule(ge=0, le=(1 << 63) - 1)
    max_tokens: int = rule(ge=1, le=MAX_PROMPT_TOKENS)
    stop_token_ids: list[int] = rule(ge=0, le=MAX_TOKEN_ID, max_len=MAX_STOP_TOKENS)
    ignore_eos: bool
    logprobs: int | None = rule(ge=0, le=20)
    # a migrated request: the tokens earlier attempts sampled, now the end of its prompt
    draw_offset: int = rule(ge=0, le=MAX_PROMPT_TOKENS, default=0)
    presence_penalty: float = rule(ge=-2, le=2, default=0.0)
    frequency_penalty: float = rule(ge=-2, le=2, default=0.0)
    repetition_penalty: float = rule(ge=0, le=100, default=1.0)  # the engine refuses 0
    min_tokens: int = rule(ge=0, le=MAX_PROMPT_TOKENS, default=0)
    # logit_bias as two lists of the same length: token ids and what is added to their logits
    bias_token_ids: list[int] = rule(ge=0, le=MAX_TOKEN_ID, max_len=MAX_LOGIT_BIAS, default_factory=list)
    bias_values: list[float] = rule(ge=-100, le=100, max_len=MAX_LOGIT_BIAS, default_factory=list)
    allowed_token_ids: list[int] = rule(
        ge=0, le=MAX_TOKEN_ID, max_len=MAX_ALLOWED_TOKENS, default_factory=list
    )
    guide: str = rule(max_len=MAX_GUIDE_CHARS, default="")  # the regular expression of a guided answer
    # bad_words as one list of token ids and the length of each word's sequence in it
    bad_word_ids: list[int] = rule(ge=0, le=MAX_TOKEN_ID, max_len=MAX_BAD_WORD_TOKENS, default_factory=list)
    bad_word_lengths: list[int] = rule(
        ge=1, le=MAX_BAD_WORD_TOKENS, max_len=MAX_BAD_WORDS, default_factory=list
    )

    def validate(self) -> None:
        if len(self.bias_token_ids) != len(self.bias_values):
            raise ValueError("bias_token_ids and bias_values differ in length")
        if sum(self.bad_word_lengths) != len(self.bad_word_ids):
            raise ValueError("bad_word_lengths do not add up to the bad_word_ids")


@struct
class MRopeSegment:
    """One text run (grid None) or one image (merged grid t, h, w: t*h*w tokens) of the prompt's
    layout."""

    start: int = rule(ge=0, le=MAX_PROMPT_TOKENS)
    length: int = rule(ge=1, le=MAX_PROMPT_TOKENS)
    position: int = rule(ge=0, le=MAX_PROMPT_TOKENS)
    grid: tuple[int, int, int] | None = rule(ge=1, le=MAX_GRID)

    def validate(self) -> None:
        if self.grid is not None and self.grid[0] * self.grid[1] * self.grid[2] != self.length:
            raise ValueError(f"an image segment of {self.length} tokens cannot have grid {self.grid}")


@struct
class ImagePlacement:
    """Where image ``index`` (as the encoders tag its embeddings) sits in the prompt.

    A video's tokens are split into temporal groups with a timestamp between them: its
    ``num_tokens`` rows go, in equal parts, to the runs starting at ``group_starts`` (empty for an
    image: one run at ``start``)."""

    index: int = rule(ge=0, le=MAX_IMAGE_INDEX)
    content_hash: str = rule(pattern=CONTENT_HASH)
    start: int = rule(ge=0, le=MAX_PROMPT_TOKENS)  # first image token
    num_tokens: int = rule(ge=1, le=MAX_PROMPT_TOKENS)
    group_starts: list[int] = rule(ge=0, le=MAX_PROMPT_TOKENS, max_len=MAX_VIDEO_FRAMES, default_factory=list)

    def validate(self) -> None:
        if not self.group_starts:
            return
        n = len(self.group_starts)
        if self.group_starts[0] != self.start or self.num_tokens % n:
            raise ValueError(
                f"a video of {self.num_tokens} tokens cannot start at {self.group_starts[:1]} in {n} groups"
            )
        size = self.num_tokens // n
        if any(b - a < size for a, b in zip(self.group_starts, self.group_starts[1:], strict=False)):
            raise ValueError("video groups overlap or are out of order")

    def runs(self) -> list[tuple[int, int]]:
        """[start, end) of each run of this item's tokens."""
        if not self.group_starts:
            return [(self.start, self.start + self.num_tokens)]
        size = self.num_tokens // len(self.group_starts)
        return [(s, s + size) for s in self.group_starts]


@message("prefill_request")
class PrefillRequest:
    """Run this prompt, send its first token to ``reply_to`` and its KV to ``decode_address``.

    The request's image embeddings come separately, from encoders, tagged with ``request_id`` and
    the placement's ``index``; they may arrive before or after this message.
    """

    request_id: str = rule(pattern=REQUEST_ID)
    prompt_token_ids: list[int] = rule(ge=0, le=MAX_TOKEN_ID, min_len=1, max_len=MAX_PROMPT_TOKENS)
    layout: list[MRopeSegment] = rule(max_len=MAX_SEGMENTS)  # empty: text only, positions 0 .. T-1
    mrope_delta: int = rule(ge=-MAX_PROMPT_TOKENS, le=MAX_PROMPT_TOKENS)
    images: list[ImagePlacement] = rule(max_len=MAX_IMAGES_PER_REQUEST)  # in prompt order
    sampling: Sampling
    decode_address: str = rule(pattern=ADDRESS)  # the chosen decode worker's KV port
    reply_to: str = rule(pattern=ADDRESS)  # the router's token inbox (TokenBatch, StageError)
    deadline: float = rule(ge=0)  # absolute Unix time: no first token by then -> error
    trace: TraceContext | None = None  # None: not from a router (stamps use this machine's clock)

    def validate(self) -> None:
        t = len(self.prompt_token_ids)
        if [im.index for im in self.images] != list(range(len(self.images))):
            raise ValueError("image placements must be indexed 0 .. n-1 in prompt order")
        end = 0
        for im in self.images:
            for lo, hi in im.runs():
                if lo < end or hi > t:
                    raise ValueError(f"image {im.index} overlaps another or leaves the prompt")
                end = hi
        if self.layout:
            covered = 0
            for seg in self.layout:
                if seg.start != covered:
                    raise ValueError(f"layout segment at {seg.start} leaves a gap or overlaps")
                covered += seg.length
            if covered != t:
                raise ValueError(f"layout covers {covered} tokens, the prompt has {t}")
        elif self.images or self.mrope_delta:
            raise ValueError("a prompt with images needs its MRoPE layout")


@message("abort_request")
class AbortRequest:
    """Stop working on a request and free what it holds (client gone, or the router gave up)."""

    request_id: str = rule(pattern=REQUEST_ID)
    reason: str = rule(max_len=1024, default="")
    source: str = rule(max_len=SOURCE, default="")
