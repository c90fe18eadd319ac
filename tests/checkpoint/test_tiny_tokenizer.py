from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from shared.checkpoint.tiny import DEFAULT_CHAT_TEMPLATE
from shared.checkpoint.tiny_tokenizer import QWEN_ADDED_TOKENS, build_tokenizer, special_token_ids

pytestmark = pytest.mark.unit

TEXT = "Hello world! <|im_start|>user\nDescribe <|vision_start|><|image_pad|><|vision_end|> it.<|im_end|>\n"


def test_special_tokens_follow_the_bpe_vocab_in_qwen_order() -> None:
    tok = build_tokenizer()
    ids = special_token_ids(tok)
    base = ids["<|endoftext|>"]
    assert [ids[c] for c, _ in QWEN_ADDED_TOKENS] == list(range(base, base + len(QWEN_ADDED_TOKENS)))
    assert tok.get_vocab_size() == base + len(QWEN_ADDED_TOKENS)
    assert 500 <= base <= 2000
    assert build_tokenizer().to_str() == tok.to_str()


def test_auto_tokenizer_loads_the_checkpoint_tokenizer(tiny_checkpoint) -> None:
    path = tiny_checkpoint()
    cfg = json.loads((path / "config.json").read_text())
    hf = AutoTokenizer.from_pretrained(path)
    raw = Tokenizer.from_file(str(path / "tokenizer.json"))
    print(f"{type(hf).__name__}: {len(hf)} tokens, config vocab_size {cfg['text_config']['vocab_size']}")

    assert cfg["text_config"]["vocab_size"] >= len(hf) == raw.get_vocab_size()
    assert hf("<|image_pad|>").input_ids == [cfg["image_token_id"]]
    for name, token in [
        ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"),
        ("vision_end_token_id", "<|vision_end|>"),
    ]:
        assert hf.convert_tokens_to_ids(token) == cfg[name]
    assert (hf.eos_token, hf.pad_token, hf.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
    assert hf.eos_token_id == cfg["text_config"]["eos_token_id"]

    ids = hf(TEXT).input_ids
    assert ids == raw.encode(TEXT).ids
    assert hf.decode(ids) == TEXT
    assert hf.decode(ids, skip_special_tokens=True) == "Hello world! user\nDescribe  it.\n"
    assert "<think>" in hf.decode(hf("<think>x</think>").input_ids, skip_special_tokens=True)

    assert hf.chat_template == DEFAULT_CHAT_TEMPLATE.read_text()
    assert (path / "chat_template.jinja").read_text() == DEFAULT_CHAT_TEMPLATE.read_text()
    gen = json.loads((path / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [hf.eos_token_id, hf.pad_token_id] and gen["do_sample"] is False
