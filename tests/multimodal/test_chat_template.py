"""The bundled Qwen3-VL chat template and where a checkpoint's own template is looked up."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from shared.multimodal.chat_template import BUNDLED_TEMPLATE_PATH, bundled_chat_template, load_chat_template

pytestmark = pytest.mark.unit

# sha256 of the chat template shipped by the published Qwen3-VL-*-Instruct checkpoints.
PUBLISHED_SHA256 = "3636d0f0bd6bef02654cdffdc447b79cb2cef8ab02cc75267345946291a489e4"


def test_bundled_template_is_the_published_one() -> None:
    assert hashlib.sha256(BUNDLED_TEMPLATE_PATH.read_bytes()).hexdigest() == PUBLISHED_SHA256


def test_renders_chatml_with_vision_placeholders(qwen_tokenizer) -> None:
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "Q"}]},
        {"role": "assistant", "content": "A"},
    ]
    text = qwen_tokenizer.apply_chat_template(
        messages, chat_template=bundled_chat_template(), tokenize=False, add_generation_prompt=True
    )
    assert text == (
        "<|im_start|>system\nS<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        "<|vision_start|><|video_pad|><|vision_end|>Q<|im_end|>\n"
        "<|im_start|>assistant\nA<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_lookup_order(tmp_path: Path) -> None:
    assert load_chat_template(tmp_path) == bundled_chat_template()
    assert load_chat_template(None) == bundled_chat_template()

    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "from tokenizer_config"}))
    assert load_chat_template(tmp_path) == "from tokenizer_config"

    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": "from chat_template.json"}))
    assert load_chat_template(tmp_path) == "from chat_template.json"

    (tmp_path / "chat_template.jinja").write_text("from chat_template.jinja")
    assert load_chat_template(tmp_path) == "from chat_template.jinja"


def test_named_templates_and_broken_files(tmp_path: Path) -> None:
    named = [{"name": "tool_use", "template": "tools"}, {"name": "default", "template": "plain"}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": named}))
    assert load_chat_template(tmp_path) == "plain"

    (tmp_path / "chat_template.json").write_text("{not json")
    (tmp_path / "chat_template.jinja").write_text("   \n")
    assert load_chat_template(tmp_path) == "plain"


def test_qwen3_tokenizer_dir_has_its_own_text_template(qwen_tokenizer_dir: Path) -> None:
    # The Qwen3 (text) tokenizer files carry a template; the loader returns it, not the bundled one.
    assert load_chat_template(qwen_tokenizer_dir) != bundled_chat_template()
