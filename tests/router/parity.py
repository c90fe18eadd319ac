"""Checks every serving setup's tests share: greedy answers over HTTP against transformers'
``generate`` on the same checkpoint, and streaming against non-streaming."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import torch
from outlines_core import Guide

from router.protocol import ChatCompletionRequest
from router.structured import guide_for
from shared.engine.guided import Guides
from shared.models.config import load_config
from shared.multimodal.image import decode_image
from shared.multimodal.prompt import PromptBuilder
from shared.multimodal.vision_inputs import ImageProcessorConfig, preprocess_image
from tests.demo_pictures import data_url
from tests.disagg.conftest import Prompt, hf_generate
from tests.encoder.conftest import png


def assert_greedy_matches_transformers(
    client: openai.OpenAI, model: str, ckpt: Path, hf, n_images: int, max_tokens: int = 8, **penalties: float
) -> str:
    """Ask with ``n_images`` distinct PNGs; the answer and usage equal transformers'. Returns the text.
    ``penalties``: sampling fields both sides take (``repetition_penalty``)."""
    images = [png(96 + 64 * i, 64 + 32 * i, seed=i) for i in range(n_images)]
    parts = [{"type": "text", "text": "Describe these."}]
    parts += [{"type": "image_url", "image_url": {"url": data_url(d)}} for d in images]
    out = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": parts}],
        max_tokens=max_tokens,
        temperature=0,
        extra_body=penalties,
    )
    builder = PromptBuilder.from_checkpoint(ckpt)
    processor = ImageProcessorConfig.from_checkpoint(ckpt)
    pix = [preprocess_image(decode_image(d), processor) for d in images]
    hf_parts = [{"type": "text", "text": "Describe these."}] + [{"type": "image"}] * n_images
    chat = builder.build([{"role": "user", "content": hf_parts}], [g for _, g in pix])
    prompt = Prompt(
        chat.input_ids, [(d, g) for d, (_, g) in zip(images, pix, strict=True)], [p for p, _ in pix]
    )
    ref = hf_generate(hf, prompt, load_config(ckpt), max_tokens, **penalties)
    assert out.usage.prompt_tokens == len(chat.input_ids)
    assert out.usage.completion_tokens == len(ref)
    text = out.choices[0].message.content
    assert text == builder.tokenizer.decode(ref, skip_special_tokens=True)
    return text


def assert_streaming_equals_non_streaming(client: openai.OpenAI, model: str) -> None:
    """The same greedy request streamed (with usage) and not: same text, 10 tokens, ``length``."""
    kw = dict(model=model, messages=[{"role": "user", "content": "Count"}], max_tokens=10, temperature=0)
    whole = client.chat.completions.create(**kw, extra_body={"ignore_eos": True})
    stream = client.chat.completions.create(
        **kw, stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 10 == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def guided_greedy(hf, ckpt: Path, ids: list[int], expression: str, max_tokens: int) -> list[int]:
    """transformers' greedy answer held to ``expression`` by outlines-core's automaton over the
    checkpoint's vocabulary (the engine's own masks are checked against the same in
    tests/engine/test_guided.py)."""
    cfg = load_config(ckpt)
    guides = Guides.from_checkpoint(ckpt, cfg.eos_token_ids[0])
    assert guides is not None
    automaton = Guide(guides.index(expression))

    def allowed(batch: int, sofar: torch.Tensor) -> list[int]:
        if sofar.shape[0] > len(ids):
            automaton.advance(int(sofar[-1]), return_tokens=False)
        return automaton.get_tokens()

    return hf_generate(
        hf,
        Prompt(ids, [], []),
        cfg,
        max_tokens,
        prefix_allowed_tokens_fn=allowed,
        eos_token_id=guides.eos_token_id,
    )


def assert_guided_matches_transformers(client: openai.OpenAI, model: str, ckpt: Path, hf) -> str:
    """A ``json_schema`` answer (greedy) is token for token transformers' under the same automaton,
    and JSON of the schema. Returns the text."""
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 8}, "rain": {"type": "boolean"}},
        "required": ["city", "rain"],
    }
    messages = [{"role": "user", "content": "Weather?"}]
    builder = PromptBuilder.from_checkpoint(ckpt)
    fmt = {"type": "json_schema", "json_schema": {"name": "weather", "schema": schema}}
    expression = guide_for(ChatCompletionRequest(model=model, messages=messages, response_format=fmt))
    ref = guided_greedy(hf, ckpt, builder.build(messages, []).input_ids, expression, 40)
    out = client.chat.completions.create(
        model=model, messages=messages, max_tokens=40, temperature=0, response_format=fmt
    )
    assert out.usage.completion_tokens == len(ref) and out.choices[0].finish_reason == "stop"
    text = out.choices[0].message.content
    assert text == builder.tokenizer.decode(ref, skip_special_tokens=True)
    assert set(json.loads(text)) == {"city", "rain"}
    return text
