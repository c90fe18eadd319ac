"""Prompt building against transformers' Qwen3VLProcessor with the real Qwen3 tokenizer files."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import Qwen3VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from shared.multimodal.chat_template import bundled_chat_template
from shared.multimodal.image import decode_image
from shared.multimodal.prompt import PromptBuilder, image_parts
from shared.multimodal.vision_inputs import ImageProcessorConfig, preprocess_image
from tests.multimodal.conftest import encode, noise_image

pytestmark = pytest.mark.unit

CFG = ImageProcessorConfig(min_pixels=32 * 32 * 4, max_pixels=32 * 32 * 20)


class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
    """Qwen3VLProcessor without its video processor slot: that class needs torchvision, which this
    project does not install. Image and text handling are the parent's, untouched."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(
            image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kwargs
        )


@pytest.fixture(scope="module")
def processor(qwen_tokenizer) -> Qwen3VLProcessor:
    return ImageOnlyQwen3VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(**CFG.to_hf_kwargs()),
        tokenizer=qwen_tokenizer,
        chat_template=bundled_chat_template(),
    )


@pytest.fixture(scope="module")
def builder(qwen_tokenizer) -> PromptBuilder:
    return PromptBuilder(qwen_tokenizer, bundled_chat_template(), merge_size=CFG.merge_size)


IMAGES = [encode(noise_image(w, h, seed=w), "PNG") for w, h in ((64, 48), (150, 70), (40, 130))]


def hf_part(data: bytes) -> dict:
    return {"type": "image", "image": Image.open(io.BytesIO(data))}


def openai_part(data: bytes) -> dict:
    return {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64," + base64.b64encode(data).decode()},
    }


def conversations(part) -> dict[str, tuple[list[dict], list[bytes], dict]]:
    """name -> (messages, images in order, template kwargs); image parts made by ``part``."""
    tools = [{"type": "function", "function": {"name": "zoom", "parameters": {"type": "object"}}}]
    a, b, c = IMAGES
    return {
        "text only": ([{"role": "user", "content": "Hello! Who are you?"}], [], {}),
        "system + one image": (
            [
                {"role": "system", "content": "You describe pictures."},
                {"role": "user", "content": [part(a), {"type": "text", "text": "What is this?"}]},
            ],
            [a],
            {},
        ),
        "three images, multi-turn": (
            [
                {"role": "system", "content": [{"type": "text", "text": "Be concise."}]},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Compare "},
                        part(a),
                        {"type": "text", "text": " with "},
                        part(b),
                    ],
                },
                {"role": "assistant", "content": "The first is smaller."},
                {
                    "role": "user",
                    "content": [part(c), {"type": "text", "text": "And this one? 中文也可以。"}],
                },
            ],
            [a, b, c],
            {},
        ),
        "tools and tool call": (
            [
                {"role": "user", "content": [part(b), {"type": "text", "text": "Zoom in."}]},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"type": "function", "function": {"name": "zoom", "arguments": '{"x": 2}'}}
                    ],
                },
                {"role": "tool", "content": "zoomed"},
            ],
            [b],
            {"tools": tools},
        ),
        "vision ids": (
            [{"role": "user", "content": [part(c), part(a), {"type": "text", "text": "Which is bigger?"}]}],
            [c, a],
            {"add_vision_id": True},
        ),
    }


@pytest.mark.parametrize("name", list(conversations(hf_part)))
@pytest.mark.parametrize("style", ["hf", "openai"])
def test_matches_qwen3vl_processor(name: str, style: str, builder: PromptBuilder, processor) -> None:
    ours_msgs, datas, kwargs = conversations(openai_part if style == "openai" else hf_part)[name]
    hf_msgs, _, _ = conversations(hf_part)[name]
    processed = [preprocess_image(decode_image(d), CFG) for d in datas]
    grids = [g for _, g in processed]

    prompt = builder.build(ours_msgs, grids, **kwargs)
    out = processor.apply_chat_template(
        hf_msgs, tokenize=True, return_dict=True, add_generation_prompt=True, **kwargs
    )

    assert prompt.input_ids == out["input_ids"][0]
    hf_text = processor.apply_chat_template(hf_msgs, tokenize=False, add_generation_prompt=True, **kwargs)
    assert builder.render(ours_msgs, **kwargs) == hf_text
    if datas:
        replacements = [processor.replace_image_token(out, i) for i in range(len(datas))]
        expanded, _ = processor.get_text_with_replacements([hf_text], replacements)
        assert prompt.text == expanded[0]
        assert [tuple(g) for g in out["image_grid_thw"].tolist()] == grids
        assert torch.equal(torch.cat([v for v, _ in processed]), torch.from_numpy(out["pixel_values"]))
    else:
        assert prompt.text == hf_text and "image_grid_thw" not in out
    # Image spans cover exactly the image tokens, in order.
    mm = out["mm_token_type_ids"][0]
    assert [i for s, e in prompt.image_spans for i in range(s, e)] == [i for i, t in enumerate(mm) if t == 1]
    print(f"{name} ({style}): {len(prompt.input_ids)} tokens, image spans {prompt.image_spans}")


def test_image_count_mismatch(builder: PromptBuilder) -> None:
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    with pytest.raises(ValueError, match="1 image parts but 2 images"):
        builder.build(msgs, [(1, 4, 4), (1, 4, 4)])
    with pytest.raises(ValueError, match="1 image parts but 0 images"):
        builder.build(msgs, [])


def test_placeholder_typed_in_text_is_refused(builder: PromptBuilder) -> None:
    msgs = [{"role": "user", "content": "sneaky <|image_pad|> token"}]
    with pytest.raises(ValueError, match="must not contain <\\|image_pad\\|>"):
        builder.build(msgs, [])


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"role": "assistant", "content": [{"type": "image"}]}, "only accepted in user and tool"),
        ({"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, "user and tool"),
        ({"role": "assistant", "content": [{"type": "video", "video": "x"}]}, "videos are only accepted"),
    ],
)
def test_refused_parts(message: dict, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        image_parts([message])


def test_from_checkpoint(tmp_path: Path, qwen_tokenizer_dir: Path) -> None:
    for f in qwen_tokenizer_dir.iterdir():
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": bundled_chat_template()}))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"merge_size": 2}))
    builder = PromptBuilder.from_checkpoint(tmp_path)
    assert builder.chat_template == bundled_chat_template()
    assert builder.image_token_id == 151655 and builder.merge_size == 2
    prompt = builder.build([{"role": "user", "content": [{"type": "image"}]}], [(1, 4, 6)])
    assert prompt.num_image_tokens == [6]
