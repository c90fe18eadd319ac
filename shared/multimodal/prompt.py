"""Chat messages plus image grids to the exact prompt token ids the language model sees.

Owns the router's text side of a multimodal request: render OpenAI-style or Hugging Face-style
messages with the checkpoint's chat template (transformers' Jinja renderer, through the
tokenizer), tokenize, and expand each ``<|image_pad|>`` to as many copies as its image has
tokens (t * h * w / merge_size^2), exactly as ``Qwen3VLProcessor`` does, recording where each
image's tokens sit. Image parts are recognised the way the Qwen3-VL template recognises them
(``type == "image"``, or an ``image`` / ``image_url`` key) in user and tool messages; their
payloads never reach the template.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.multimodal.chat_template import load_chat_template
from shared.multimodal.vision_inputs import GridTHW, ImageProcessorConfig, num_image_tokens

IMAGE_TOKEN = "<|image_pad|>"
VISION_START_TOKEN = "<|vision_start|>"
VISION_END_TOKEN = "<|vision_end|>"

Message = Mapping[str, Any]


@dataclass(frozen=True)
class ChatPrompt:
    """A rendered prompt with its image placeholders expanded."""

    text: str  # rendered text, each <|image_pad|> repeated to its image's token count
    input_ids: list[int]
    image_spans: list[tuple[int, int]]  # [start, end) of each image's tokens in input_ids
    image_grid_thws: list[GridTHW]

    @property
    def num_image_tokens(self) -> list[int]:
        return [end - start for start, end in self.image_spans]


def _is_image_part(part: Any) -> bool:
    # The same test as the Qwen3-VL template.
    return isinstance(part, Mapping) and (
        part.get("type") == "image" or "image" in part or "image_url" in part
    )


def _is_video_part(part: Any) -> bool:
    return isinstance(part, Mapping) and (part.get("type") == "video" or "video" in part)


def image_parts(messages: Sequence[Message]) -> list[Mapping[str, Any]]:
    """The image content parts, in the order the template renders them (and images are numbered).

    Raises ValueError for video parts and for images in system or assistant messages, which the
    template would silently drop.
    """
    found: list[Mapping[str, Any]] = []
    for index, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, Sequence) or isinstance(content, str):
            continue
        role = message.get("role")
        for part in content:
            if _is_image_part(part):
                if role not in ("user", "tool"):
                    raise ValueError(
                        f"message {index} ({role}): images are only accepted in user and tool messages"
                    )
                found.append(part)
            elif _is_video_part(part):
                raise ValueError(f"message {index} ({role}): video input is not supported")
    return found


def _template_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Copies fit for the template: None-valued keys dropped (as transformers does) and image
    parts reduced to ``{"type": "image"}`` so that no payload (bytes, data URLs) is rendered or
    walked by the sandbox."""
    out = []
    for message in messages:
        msg = {k: v for k, v in message.items() if v is not None}
        content = msg.get("content")
        if isinstance(content, Sequence) and not isinstance(content, str):
            msg["content"] = [{"type": "image"} if _is_image_part(p) else p for p in content]
        out.append(msg)
    return out


class PromptBuilder:
    """Tokenizer + chat template of one checkpoint; turns messages into ``ChatPrompt``s."""

    def __init__(
        self, tokenizer: Any, chat_template: str, *, merge_size: int = 2, image_token: str = IMAGE_TOKEN
    ) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.merge_size = merge_size
        self.image_token = image_token
        self.image_token_id: int = tokenizer.convert_tokens_to_ids(image_token)
        if self.image_token_id is None or self.image_token_id == getattr(tokenizer, "unk_token_id", -1):
            raise ValueError(f"the tokenizer has no {image_token} token")

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
        """Rendered prompt text with one ``<|image_pad|>`` per image (not expanded)."""
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
        *,
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        **template_kwargs: Any,
    ) -> ChatPrompt:
        """Render, tokenize and expand. ``image_grid_thws[i]`` belongs to ``image_parts(messages)[i]``.

        Raises ValueError when the image parts and grids differ in number, or when message text
        itself contains the image placeholder token.
        """
        if any(len(g) != 3 for g in image_grid_thws):
            raise ValueError(f"image grids must be (t, h, w) triples, got {list(image_grid_thws)}")
        grids: list[GridTHW] = [(int(g[0]), int(g[1]), int(g[2])) for g in image_grid_thws]
        n_parts = len(image_parts(messages))
        if n_parts != len(grids):
            raise ValueError(f"the messages have {n_parts} image parts but {len(grids)} images were given")
        text = self.render(
            messages, tools=tools, add_generation_prompt=add_generation_prompt, **template_kwargs
        )
        ids: list[int] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        n_placeholders = ids.count(self.image_token_id)
        if n_placeholders != n_parts:
            raise ValueError(
                f"the rendered prompt has {n_placeholders} {self.image_token} tokens for {n_parts} image parts; "
                f"message text must not contain {self.image_token}"
            )
        return expand_image_tokens(text, ids, grids, self.image_token, self.image_token_id, self.merge_size)


def expand_image_tokens(
    text: str,
    input_ids: Sequence[int],
    image_grid_thws: Sequence[GridTHW],
    image_token: str,
    image_token_id: int,
    merge_size: int,
) -> ChatPrompt:
    """Repeat the i-th image placeholder (in text and ids) to image i's token count.

    Expanding in id space equals tokenizing the expanded text, because the placeholder is a
    special token that the tokenizer always splits on.
    """
    counts = [num_image_tokens(g, merge_size) for g in image_grid_thws]
    pieces = text.split(image_token)
    if len(pieces) - 1 != len(counts):
        raise ValueError(
            f"the text has {len(pieces) - 1} {image_token} placeholders for {len(counts)} images"
        )
    expanded_text = pieces[0] + "".join(
        image_token * n + rest for n, rest in zip(counts, pieces[1:], strict=True)
    )

    new_ids: list[int] = []
    spans: list[tuple[int, int]] = []
    for token in input_ids:
        if token != image_token_id:
            new_ids.append(token)
            continue
        if len(spans) == len(counts):
            raise ValueError(f"the ids have more image placeholders than the {len(counts)} images")
        n = counts[len(spans)]
        spans.append((len(new_ids), len(new_ids) + n))
        new_ids.extend([image_token_id] * n)
    if len(spans) != len(counts):
        raise ValueError(f"the ids have {len(spans)} image placeholders for {len(counts)} images")
    return ChatPrompt(expanded_text, new_ids, spans, list(image_grid_thws))
