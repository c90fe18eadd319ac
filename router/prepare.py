"""OpenAI requests to what the cluster runs: prompt token ids, loaded images and videos, sampling
parameters.

Owns the model-dependent checks (every failure is a 400 ``APIError``): the model id, the number
and validity of images and videos, the chat template (and its tool-call format, for ``tools``), the
context length, the token budget, the token controls (``router.token_controls``), the output's
structure (``router.structured``).
Images and videos go to the backend in prompt order, each with its runs of tokens.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from router.images import FetchLimits, load_image_url
from router.jobs import LoadedImage, VisionTokens
from router.protocol import (
    MAX_GENERATIONS,
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    SamplingFields,
    bad_request,
)
from router.sampling_defaults import sampling_value
from router.structured import guide_for
from router.token_controls import bad_words, token_controls
from router.tool_calls import START as TOOL_CALL_START
from router.videos import Sampling, VideoRules, load_video, too_many
from shared.engine import SamplingParams
from shared.models.config import load_config
from shared.multimodal.image import ImageError, image_hash, image_size
from shared.multimodal.prompt import ChatPrompt, PromptBuilder
from shared.multimodal.video import VideoProcessorConfig
from shared.multimodal.vision_inputs import ImageProcessorConfig, grid_thw_for_size


@dataclass
class Prepared:
    prompt_ids: list[int]
    images: list[LoadedImage]
    params: SamplingParams
    stops: list[str]
    include_stop: bool = False  # the stop string or stop token that ends the answer is in its text
    skip_special_tokens: bool = True

    def choice(self, index: int) -> Prepared:
        """The ``index``-th of a request's n choices: the same, but a seeded request's choice i
        draws with seed + i (every choice its own tokens, the whole answer reproducible)."""
        seed = self.params.seed
        if index == 0 or seed is None:
            return self
        return replace(self, params=replace(self.params, seed=(seed + index) % (1 << 63)))


class Preparer:
    def __init__(
        self,
        model_dir: Path,
        model_name: str,
        max_model_len: int | None,
        max_images: int,
        limits: FetchLimits,
        videos: VideoRules | None = None,
        sampling_defaults: dict[str, Any] | None = None,
    ):
        """``sampling_defaults``: what a request that leaves a sampling field out gets instead of
        OpenAI's default (``router.sampling_defaults``: the model's generation_config.json)."""
        self.model_name, self.max_images, self.limits = model_name, max_images, limits
        self.sampling_defaults = sampling_defaults or {}
        self.videos = videos or VideoRules()
        self.config = load_config(model_dir)
        self.builder = PromptBuilder.from_checkpoint(model_dir)
        self.tokenizer = self.builder.tokenizer
        self.processor = ImageProcessorConfig.from_checkpoint(model_dir)
        self.video_processor = VideoProcessorConfig.from_checkpoint(model_dir)
        self.tokens = VisionTokens(
            self.builder.image_token_id, self.builder.video_token_id, self.processor.merge_size
        )
        self.max_model_len = max_model_len or self.config.text.max_position_embeddings
        self.eos_ids = _eos_ids(model_dir, self.config.eos_token_ids)

    def check_model(self, model: str) -> None:
        if model != self.model_name:
            raise APIError(404, f"the model {model!r} does not exist", param="model", code="model_not_found")

    async def chat(self, req: ChatCompletionRequest, client: httpx.AsyncClient) -> Prepared:
        self.check_model(req.model)
        messages: list[dict[str, Any]] = []
        urls: list[tuple[str, str]] = []
        videos: list[tuple[str, float | None, str]] = []
        for m, msg in enumerate(req.messages):
            if msg.tool_calls and msg.role != "assistant":
                raise bad_request("tool_calls are only accepted in assistant messages", f"messages[{m}]")
            d = msg.model_dump(exclude_none=True)
            if isinstance(msg.content, list):
                for p, part in enumerate(msg.content):
                    if part.type in ("image_url", "video_url") and msg.role not in ("user", "tool"):
                        raise bad_request(
                            "images and videos are only accepted in user and tool messages", f"messages[{m}]"
                        )
                    if part.type == "image_url":
                        urls.append((part.image_url.url, f"messages[{m}].content[{p}].image_url.url"))
                    elif part.type == "video_url":
                        param = f"messages[{m}].content[{p}].video_url.url"
                        videos.append((part.video_url.url, part.video_url.fps, param))
            if d.get("role") == "developer":
                d["role"] = "system"
            messages.append(d)
        if len(urls) > self.max_images:
            raise bad_request(
                f"at most {self.max_images} images per request, got {len(urls)}",
                "messages",
                "too_many_images",
            )
        if (error := too_many(len(videos), self.videos)) is not None:
            raise error
        kw = req.mm_processor_kwargs
        if kw is not None and kw.fps is not None and kw.num_frames is not None:
            raise bad_request(
                "mm_processor_kwargs: fps and num_frames exclude each other", "mm_processor_kwargs"
            )
        sampling = Sampling(kw.fps, kw.num_frames) if kw is not None else Sampling()
        images, loaded_videos = await asyncio.gather(
            asyncio.gather(*(self._image(u, param, client) for u, param in urls)),
            asyncio.gather(
                *(
                    load_video(u, fps, param, self.videos, self.video_processor, sampling, client)
                    for u, fps, param in videos
                )
            ),
        )
        slots = [s for _, s in loaded_videos]
        tools = self._tools(req)
        try:
            prompt = await asyncio.to_thread(
                partial(self.builder.build, tools=tools), messages, [im.grid for im in images], slots
            )
        except ValueError as e:
            raise bad_request(f"cannot apply the chat template: {e}", "messages") from None
        items = _in_prompt_order(prompt, list(images), [v for v, _ in loaded_videos])
        if req.top_logprobs is not None and not req.logprobs:
            raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
        top = (req.top_logprobs or 0) if req.logprobs else None
        max_tokens = req.max_completion_tokens or req.max_tokens
        return self._prepared(req, prompt.input_ids, items, max_tokens, top)

    def _tools(self, req: ChatCompletionRequest) -> list[dict[str, Any]] | None:
        """The tools the chat template shows the model (``tool_choice`` "auto"), if any."""
        if not req.calls_tools():
            return None
        if TOOL_CALL_START not in self.builder.chat_template:
            raise bad_request("this model's chat template has no format for tool calls", "tools")
        return [t.model_dump(exclude_none=True) for t in req.tools or ()]

    async def completions(self, req: CompletionRequest) -> list[Prepared]:
        """One ``Prepared`` per prompt of the request (a batch of prompts, or one)."""
        self.check_model(req.model)
        if req.echo:
            raise bad_request("echo is not supported", "echo")
        prompts = _prompts(req.prompt)
        if not prompts:
            raise bad_request("the prompt is empty", "prompt")
        if len(prompts) * req.n > MAX_GENERATIONS:
            raise bad_request(
                f"{len(prompts)} prompts x n {req.n} generations: at most {MAX_GENERATIONS} per request",
                "prompt",
            )
        params = [f"prompt[{k}]" if len(prompts) > 1 else "prompt" for k in range(len(prompts))]
        return [await self._completion(req, p, param) for p, param in zip(prompts, params, strict=True)]

    async def _completion(self, req: CompletionRequest, prompt: str | list[int], param: str) -> Prepared:
        if isinstance(prompt, str):
            text = prompt
            ids = await asyncio.to_thread(lambda: self.tokenizer(text, add_special_tokens=False)["input_ids"])
        else:
            ids = list(prompt)
            if any(not 0 <= t < len(self.tokenizer) for t in ids):
                raise bad_request("prompt token ids out of the vocabulary", param)
        if self.builder.image_token_id in ids or self.builder.video_token_id in ids:
            raise bad_request("the prompt must not contain image or video tokens", param)
        return self._prepared(req, ids, [], req.max_tokens, req.logprobs)

    def _prepared(
        self,
        req: SamplingFields,
        ids: list[int],
        images: list[LoadedImage],
        max_tokens: int | None,
        logprobs: int | None,
    ) -> Prepared:
        if not ids:
            raise bad_request("the prompt is empty", "prompt")
        room = self.max_model_len - len(ids)
        if room < 1:
            raise bad_request(
                f"the prompt has {len(ids)} tokens; the model's context is {self.max_model_len}",
                "messages", "context_length_exceeded",
            )  # fmt: skip
        if max_tokens is not None and max_tokens > room:
            raise bad_request(
                f"{len(ids)} prompt tokens + max_tokens {max_tokens} exceed the context of {self.max_model_len}",
                "max_tokens", "context_length_exceeded",
            )  # fmt: skip
        stops = req.stop_strings()
        d = self.sampling_defaults
        if max_tokens is None and "max_tokens" in d:  # the model's cap, within the context's room
            max_tokens = min(d["max_tokens"], room)
        max_tokens = max_tokens or room
        tokens = token_controls(req, self.config.text.vocab_size, max_tokens, self.eos_ids)
        params = SamplingParams(
            temperature=sampling_value(req, "temperature", d), top_p=sampling_value(req, "top_p", d),
            top_k=max(0, sampling_value(req, "top_k", d)), min_p=sampling_value(req, "min_p", d), seed=req.seed,
            presence_penalty=sampling_value(req, "presence_penalty", d),
            frequency_penalty=sampling_value(req, "frequency_penalty", d),
            repetition_penalty=sampling_value(req, "repetition_penalty", d),
            max_tokens=max_tokens, stop_token_ids=tokens.stop_token_ids, ignore_eos=req.ignore_eos, logprobs=logprobs,
            min_tokens=tokens.min_tokens, logit_bias=tokens.logit_bias, allowed_token_ids=tokens.allowed_token_ids,
            guide=guide_for(req), bad_words=bad_words(req, self.tokenizer),
        )  # fmt: skip
        return Prepared(ids, images, params, stops, req.include_stop_str_in_output, req.skip_special_tokens)

    async def _image(self, url: str, param: str, client: httpx.AsyncClient) -> LoadedImage:
        data = await load_image_url(url, param, self.limits, client)
        try:  # the header only: the encoder decodes the pixels (a damaged body is its 400)
            width, height = image_size(data)
        except ImageError as e:
            raise bad_request(f"invalid image: {e}", param, "invalid_image") from None
        try:
            grid = grid_thw_for_size(height, width, self.processor)
        except ValueError as e:
            raise bad_request(f"invalid image: {e}", param, "invalid_image") from None
        return LoadedImage(data, image_hash(data), grid)


def _prompts(prompt: str | list[int] | list[str] | list[list[int]]) -> list[str | list[int]]:
    """A completions request's prompts: a text, token ids, or a list of either."""
    if isinstance(prompt, str):
        return [prompt]
    if all(isinstance(p, int) for p in prompt):  # one prompt of token ids (or none: empty)
        return [[p for p in prompt if isinstance(p, int)]]
    return [p for p in prompt if isinstance(p, str | list)]


def _in_prompt_order(
    prompt: ChatPrompt, images: list[LoadedImage], videos: list[LoadedImage]
) -> list[LoadedImage]:
    """Images and videos with their token runs, sorted by where they start in the prompt."""
    items = [replace(im, spans=(span,)) for im, span in zip(images, prompt.image_spans, strict=True)]
    items += [replace(v, spans=tuple(spans)) for v, spans in zip(videos, prompt.video_spans, strict=True)]
    return sorted(items, key=lambda im: im.spans[0][0])


def _eos_ids(model_dir: Path, config_ids: tuple[int, ...]) -> tuple[int, ...]:
    ids = set(config_ids)
    try:
        gen = json.loads((model_dir / "generation_config.json").read_text()).get("eos_token_id")
        ids |= set(gen if isinstance(gen, list) else [gen] if gen is not None else [])
    except (OSError, ValueError):
        pass
    return tuple(sorted(ids))
