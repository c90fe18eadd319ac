"""Chat messages plus image grids and video slots to the exact prompt token ids the model sees.

Owns the router's text side of a multimodal request: render OpenAI-style or Hugging Face-style
messages with the checkpoint's chat template (transformers' Jinja renderer, through the
tokenizer), tokenize, and expand the vision placeholders exactly as ``Qwen3VLProcessor`` does,
recording where each image's and each video group's tokens sit:

- each ``<|image_pad|>`` becomes as many copies as its image has tokens (t * h * w / merge^2);
- each video, rendered ``<|vision_start|><|video_pad|><|vision_end|>``, is replaced as a whole by,
  for each temporal group g, ``<{t_g:.1f} seconds><|vision_start|>`` + h * w / merge^2 copies of
  ``<|video_pad|>`` + ``<|vision_end|>``.

Vision parts are recognised the way the Qwen3-VL template recognises them (``type == "image"``,
or an ``image`` / ``image_url`` key; ``type == "video"`` or a ``video`` key, plus OpenAI-style
``video_url``) in user and tool messages; their payloads never reach the template.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.multimodal.chat_template import load_chat_template
from shared.multimodal.vision_inputs import GridTHW, ImageProcessorConfig, num_image_tokens

IMAGE_TOKEN = "<|image_pad|>"
VIDEO_TOKEN = "<|video_pad|>"
VISION_START_TOKEN = "<|vision_start|>"
VISION_END_TOKEN = "<|vision_end|>"

Message = Mapping[str, Any]


def timestamp_text(seconds: float) -> str:
    """The text before a video temporal group: its time with one decimal, as Qwen3VLProcessor."""
    return f"<{seconds:.1f} seconds>"


@dataclass(frozen=True)
class VideoSlots:
    """What the prompt needs of one sampled video: its patch grid and each temporal group's time."""

    grid_thw: GridTHW  # (T temporal groups, gh, gw) in patches, the vision tower's video_grid_thw
    timestamps: tuple[float, ...]  # seconds, one per temporal group

    def __post_init__(self) -> None:
        if len(self.grid_thw) != 3:
            raise ValueError(f"a video grid is a (t, h, w) triple, got {self.grid_thw}")
        t, h, w = (int(v) for v in self.grid_thw)
        stamps = tuple(float(v) for v in self.timestamps)
        if min(t, h, w) < 1:
            raise ValueError(f"video grid {(t, h, w)} has an empty axis")
        if len(stamps) != t:
            raise ValueError(f"video grid {(t, h, w)} has {t} temporal groups but {len(stamps)} timestamps")
        if not all(math.isfinite(v) and v >= 0 for v in stamps):
            raise ValueError(f"video timestamps must be finite and non-negative, got {stamps}")
        object.__setattr__(self, "grid_thw", (t, h, w))  # plain ints, also from lists or tensors
        object.__setattr__(self, "timestamps", stamps)


@dataclass(frozen=True)
class ChatPrompt:
    """A rendered prompt with its vision placeholders expanded."""

    text: str  # rendered text, placeholders expanded as Qwen3VLProcessor expands them
    input_ids: list[int]
    image_spans: list[tuple[int, int]]  # [start, end) of each image's tokens in input_ids
    image_grid_thws: list[GridTHW]
    # per video, [start, end) of each temporal group's <|video_pad|> tokens in input_ids
    video_spans: list[list[tuple[int, int]]] = field(default_factory=list)
    video_grid_thws: list[GridTHW] = field(default_factory=list)

    @property
    def num_image_tokens(self) -> list[int]:
        return [end - start for start, end in self.image_spans]

    @property
    def num_video_tokens(self) -> list[int]:
        return [sum(end - start for start, end in groups) for groups in self.video_spans]


def _is_image_part(part: Any) -> bool:
    # The same test as the Qwen3-VL template.
    return isinstance(part, Mapping) and (
        part.get("type") == "image" or "image" in part or "image_url" in part
    )


def _is_video_part(part: Any) -> bool:
    # The template's test (type "video" or a "video" key), plus OpenAI-style video_url parts, which
    # the template would drop. Image parts win, as in the template.
    return isinstance(part, Mapping) and (
        part.get("type") in ("video", "video_url") or "video" in part or "video_url" in part
    )


def _vision_parts(messages: Sequence[Message]) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    images: list[Mapping[str, Any]] = []
    videos: list[Mapping[str, Any]] = []
    for index, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, Sequence) or isinstance(content, str):
            continue
        role = message.get("role")
        for part in content:
            if _is_image_part(part):
                kind, found = "images", images
            elif _is_video_part(part):
                kind, found = "videos", videos
            else:
                continue
            if role not in ("user", "tool"):
                raise ValueError(
                    f"message {index} ({role}): {kind} are only accepted in user and tool messages"
                )
            found.append(part)
    return images, videos


def image_parts(messages: Sequence[Message]) -> list[Mapping[str, Any]]:
    """The image content parts, in the order the template renders them (and images are numbered).

    Raises ValueError for images or videos in system or assistant messages, which the template
    would silently drop.
    """
    return _vision_parts(messages)[0]


def video_parts(messages: Sequence[Message]) -> list[Mapping[str, Any]]:
    """The video content parts, in the order the template renders them; the same rules as
    ``image_parts``."""
    return _vision_parts(messages)[1]


def _template_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Copies fit for the template: None-valued keys dropped (as transformers does) and vision
    parts reduced to ``{"type": "image"}`` / ``{"type": "video"}`` so that no payload (bytes, data
    URLs) is rendered or walked by the sandbox."""
    out = []
    for message in messages:
        msg = {k: v for k, v in message.items() if v is not None}
        content = msg.get("content")
        if isinstance(content, Sequence) and not isinstance(content, str):
            msg["content"] = [
                {"type": "image"} if _is_image_part(p) else {"type": "video"} if _is_video_part(p) else p
                for p in content
            ]
        out.append(msg)
    return out


class PromptBuilder:
    """Tokenizer + chat template of one checkpoint; turns messages into ``ChatPrompt``s."""

    def __init__(
        self,
        tokenizer: Any,
        chat_template: str,
        *,
        merge_size: int = 2,
        image_token: str = IMAGE_TOKEN,
        video_token: str = VIDEO_TOKEN,
    ) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.merge_size = merge_size
        self.image_token = image_token
        self.video_token = video_token
        self.image_token_id = self._token_id(image_token)
        self.video_token_id = self._token_id(video_token)
        self.vision_start_token_id = self._token_id(VISION_START_TOKEN)
        self.vision_end_token_id = self._token_id(VISION_END_TOKEN)

    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == getattr(self.tokenizer, "unk_token_id", -1):
            raise ValueError(f"the tokenizer has no {token} token")
        return int(token_id)

    @classmethod
    def from_checkpoint(
        cls, checkpoint_dir: str | Path, *, chat_template: str | None = None, merge_size: int | None = None
    ) -> PromptBuilder:
        """Load the tokenizer (local files only), the chat template and merge_size of a checkpoint."""
        from transformers import AutoTokenizer  # deferred: heavy import

        tokenizer = AutoTokenizer.from_pretrained(str(checkpoint_dir), local_files_only=True)
        template = chat_template if chat_template is not None else load_chat_template(checkpoint_dir)
        if merge_size is None:
            merge_size = ImageProcessorConfig.from_checkpoint(checkpoint_dir).merge_size
        return cls(tokenizer, template, merge_size=merge_size)

    def render(
        self,
        messages: Sequence[Message],
        *,
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        **template_kwargs: Any,
    ) -> str:
        """Rendered prompt text with one placeholder per image and per video (not expanded)."""
        if not messages:
            raise ValueError("messages must not be empty")
        return self.tokenizer.apply_chat_template(
            _template_messages(messages),
            tools=tools,
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
            **template_kwargs,
        )

    def build(
        self,
        messages: Sequence[Message],
        image_grid_thws: Sequence[Sequence[int]],
        videos: Sequence[VideoSlots] = (),
        *,
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        **template_kwargs: Any,
    ) -> ChatPrompt:
        """Render, tokenize and expand. ``image_grid_thws[i]`` belongs to ``image_parts(messages)[i]``,
        ``videos[j]`` to ``video_parts(messages)[j]``.

        Raises ValueError when the vision parts and the grids or videos differ in number, when a
        video grid does not divide by merge_size, or when message text itself contains a
        placeholder token.
        """
        if any(len(g) != 3 for g in image_grid_thws):
            raise ValueError(f"image grids must be (t, h, w) triples, got {list(image_grid_thws)}")
        grids: list[GridTHW] = [(int(g[0]), int(g[1]), int(g[2])) for g in image_grid_thws]
        n_images, n_videos = (len(parts) for parts in _vision_parts(messages))
        if n_images != len(grids):
            raise ValueError(f"the messages have {n_images} image parts but {len(grids)} images were given")
        if n_videos != len(videos):
            raise ValueError(f"the messages have {n_videos} video parts but {len(videos)} videos were given")
        m = self.merge_size
        if bad := [v.grid_thw for v in videos if v.grid_thw[1] % m or v.grid_thw[2] % m]:
            raise ValueError(f"video grids {bad} are not divisible by merge_size {m}")
        text = self.render(
            messages, tools=tools, add_generation_prompt=add_generation_prompt, **template_kwargs
        )
        for token, n, what in ((self.image_token, n_images, "image"), (self.video_token, n_videos, "video")):
            if (found := text.count(token)) != n:
                raise ValueError(
                    f"the rendered prompt has {found} {token} tokens for {n} {what} parts; "
                    f"message text must not contain {token}"
                )
        # Each video's wrapper becomes its groups, one <|video_pad|> each until _expand. The groups
        # go into the text before tokenizing, not into the ids after it: the first timestamp's "<"
        # can merge with the text before it (": <" is one token of Qwen3's), so only tokenizing it
        # in place gives the ids that the processor's tokenization of the expanded text gives.
        wrapper = VISION_START_TOKEN + self.video_token + VISION_END_TOKEN
        pieces = text.split(wrapper)
        if len(pieces) - 1 != n_videos:
            raise ValueError(f"the chat template must render each video as {wrapper}")
        text = pieces[0] + "".join(
            self._video_groups(video) + rest for video, rest in zip(videos, pieces[1:], strict=True)
        )
        ids: list[int] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._expand(text, ids, grids, videos)

    def _video_groups(self, video: VideoSlots) -> str:
        return "".join(
            timestamp_text(t) + VISION_START_TOKEN + self.video_token + VISION_END_TOKEN
            for t in video.timestamps
        )

    def _expand(
        self, text: str, ids: list[int], image_grids: list[GridTHW], videos: Sequence[VideoSlots]
    ) -> ChatPrompt:
        """Repeat each placeholder, in text and ids, to its image's or video group's token count.

        In id space this equals tokenizing the expanded text: the placeholders are added tokens,
        which the tokenizer splits out before normalising and pre-tokenising, so n copies in a row
        become n ids and the text between them is tokenized alike either way.
        """
        image_counts = [num_image_tokens(g, self.merge_size) for g in image_grids]
        # (video index, tokens) of every temporal group, in prompt order
        groups = [
            (j, v.grid_thw[1] * v.grid_thw[2] // self.merge_size**2)
            for j, v in enumerate(videos)
            for _ in v.timestamps
        ]
        counts = {self.image_token: iter(image_counts), self.video_token: iter(n for _, n in groups)}
        pieces = re.split(f"({re.escape(self.image_token)}|{re.escape(self.video_token)})", text)
        expanded = pieces[0] + "".join(
            token * next(counts[token]) + rest for token, rest in zip(pieces[1::2], pieces[2::2], strict=True)
        )

        new_ids: list[int] = []
        image_spans: list[tuple[int, int]] = []
        video_spans: list[list[tuple[int, int]]] = [[] for _ in videos]
        n_groups = 0
        for token in ids:
            if token == self.image_token_id and len(image_spans) < len(image_counts):
                n = image_counts[len(image_spans)]
                image_spans.append((len(new_ids), len(new_ids) + n))
                new_ids.extend([token] * n)
            elif token == self.video_token_id and n_groups < len(groups):
                j, n = groups[n_groups]
                video_spans[j].append((len(new_ids), len(new_ids) + n))
                new_ids.extend([token] * n)
                n_groups += 1
            else:
                new_ids.append(token)
        if (
            len(image_spans) != len(image_counts)
            or n_groups != len(groups)
            or new_ids.count(self.image_token_id) != sum(image_counts)
            or new_ids.count(self.video_token_id) != sum(n for _, n in groups)
        ):
            raise ValueError("the tokenizer did not turn each placeholder into exactly one token")
        return ChatPrompt(
            expanded, new_ids, image_spans, image_grids, video_spans, [v.grid_thw for v in videos]
        )
