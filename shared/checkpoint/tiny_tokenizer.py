"""A tiny Qwen-style tokenizer: byte-level BPE trained on a built-in English corpus.

The pipeline mirrors the published Qwen3 ``tokenizer.json`` (NFC normalizer, Qwen's split regex,
byte-level pre-tokenizer and decoder, no unk token) so that transformers' ``Qwen2Tokenizer`` can
rebuild it from our files exactly as it does for the real one. Qwen's special tokens follow the BPE
vocabulary in Qwen's order, so every id is ``bpe_vocab_size + offset`` (the real ones are
``151643 + offset``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

# Qwen's pre-tokenization regex, as in the published tokenizer.json.
SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# (content, special) in Qwen3's id order. "special" is what the published files say: the
# tool / think / fim markers are added tokens but not special (they survive skip_special_tokens).
QWEN_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)

DEFAULT_BPE_VOCAB_SIZE = 1000

CORPUS = """\
The quick brown fox jumps over the lazy dog. A picture is worth a thousand words.
Describe this image in one sentence. What is in the picture? There is a red car parked next to a tree.
The cat is sleeping on the sofa, and the dog is watching the birds through the window.
Hello! How are you today? I am fine, thank you. Please tell me a short story about a robot.
Once upon a time, in a small village near the mountains, there lived an old man and his daughter.
Every morning they walked to the river to fetch water, and every evening they watched the sun set.
The weather today is sunny with a few clouds; tomorrow it will rain in the afternoon.
Mixture of experts models route each token to a few experts chosen by a learned gate.
The vision encoder turns an image into patches, and the language model reads them as tokens.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14 1,000,000 and 50% of 12 is 6.
Questions and answers: Who wrote this? When did it happen? Where is the station? Why not?
She said, "Let's meet at the cafe at noon." He replied, "I'll be there, don't worry."
Colors: red, orange, yellow, green, blue, indigo, violet, black, white, gray, brown and pink.
Animals: cat, dog, horse, cow, sheep, goat, lion, tiger, bear, wolf, fox, rabbit, mouse, bird, fish.
Shapes: circle, square, triangle, rectangle, line, point, curve, corner, edge, center, border.
The table has four legs and a wooden top. The chair is next to the table. A lamp stands in the corner.
In the kitchen there are plates, cups, spoons, forks, knives, a kettle, an oven and a refrigerator.
Count the apples in the basket: one, two, three, four, five, six, seven, eight, nine, ten.
The left side of the image shows a mountain; the right side shows a lake with a small boat.
def add(a, b):
    return a + b

for i in range(10):
    print(i * i)
{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
You are a helpful assistant. Answer the question briefly and accurately.
The server streams tokens back to the client as soon as they are generated.
Encode the image, prefill the prompt, then decode one token at a time until the end.
Large models are served on many machines; each machine holds part of the work.
The children played in the park while their parents talked on the bench under the oak tree.
A train leaves the station at nine o'clock and arrives in the city two hours later.
Reading books, writing letters, painting pictures and singing songs are good ways to spend time.
The ocean is deep and blue; waves crash on the rocks and seagulls fly above the beach.
Science explains the world: light travels fast, water boils at one hundred degrees, and ice floats.
system: You are a helpful assistant. user: What is shown here? assistant: A dog running on the grass.
The user asks a question and the assistant answers it; the system message sets the rules.
Thank you for your help. You're welcome. Goodbye, and have a nice day!
"""


def train_bpe(lines: Iterable[str], bpe_vocab_size: int) -> Tokenizer:
    """A Qwen-style byte-level BPE of ``bpe_vocab_size`` tokens trained on ``lines``, then Qwen's
    added tokens (so their ids start at ``bpe_vocab_size`` when the corpus fills the vocabulary)."""
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.post_processor = None
    tok.decoder = decoders.ByteLevel()  # takes no options (it ignores any given)
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab_size,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(lines, trainer=trainer)
    tok.add_tokens([AddedToken(c, special=s, normalized=False) for c, s in QWEN_ADDED_TOKENS])
    return tok


@functools.cache
def _train(bpe_vocab_size: int) -> str:
    return train_bpe(CORPUS.splitlines(keepends=True), bpe_vocab_size).to_str()


def build_tokenizer(bpe_vocab_size: int = DEFAULT_BPE_VOCAB_SIZE) -> Tokenizer:
    """The trained tokenizer (deterministic; trained once per process and size)."""
    return Tokenizer.from_str(_train(bpe_vocab_size))


def special_token_ids(tok: Tokenizer) -> dict[str, int]:
    ids = {content: tok.token_to_id(content) for content, _ in QWEN_ADDED_TOKENS}
    missing = [content for content, i in ids.items() if i is None]
    if missing:
        raise ValueError(f"the tokenizer lacks the special tokens {missing}")
    return {content: i for content, i in ids.items() if i is not None}


def tokenizer_config(tok: Tokenizer, chat_template: str | None) -> dict:
    """tokenizer_config.json laid out as Qwen3's, with our ids."""
    ids = special_token_ids(tok)
    added = {
        str(ids[content]): {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }
        for content, special in QWEN_ADDED_TOKENS
    }
    cfg: dict = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": [c for c, s in QWEN_ADDED_TOKENS[1:] if s],
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 262144,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    if chat_template is not None:
        cfg["chat_template"] = chat_template
    return cfg


def write_tokenizer(out_dir: Path, tok: Tokenizer, chat_template: str | None) -> None:
    """tokenizer.json, vocab.json + merges.txt (as published), tokenizer_config.json, chat_template.jinja."""
    out_dir = Path(out_dir)
    (out_dir / "tokenizer.json").write_text(tok.to_str(pretty=True))
    model = json.loads(tok.to_str())["model"]
    vocab = dict(sorted(model["vocab"].items(), key=lambda kv: kv[1]))
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    cfg = tokenizer_config(tok, chat_template)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    if chat_template is not None:
        (out_dir / "chat_template.jinja").write_text(chat_template)
