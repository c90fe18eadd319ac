"""Guided decoding (``shared.engine.guided``): the vocabulary as bytes, and answers held to a
regular expression, greedy (token for token transformers' ``generate`` under the same automaton)
and sampled, through a migration too."""

from __future__ import annotations

import json
import re

import pytest
import torch
from outlines_core import Guide, Index, json_schema
from transformers import AutoTokenizer

from shared.engine import Engine, EngineConfig, Request, SamplingParams
from shared.engine.guided import GuideError, Guides, byte_vocabulary
from tests.engine.prompts import hf_greedy

pytestmark = pytest.mark.slow

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 6},
        "rain": {"type": "boolean"},
        "level": {"enum": ["low", "high"]},
    },
    "required": ["city", "rain", "level"],
}
REGEX = json_schema.build_regex_from_schema(json.dumps(SCHEMA))


@pytest.fixture(scope="module")
def guides(ckpt, lm) -> Guides:
    g = Guides.from_checkpoint(ckpt, lm.config.eos_token_ids[0])
    assert g is not None
    return g


@pytest.fixture(scope="module")
def engine(lm, guides) -> Engine:
    return Engine(lm, EngineConfig(block_size=16, num_blocks=128, max_num_seqs=8), guides)


def test_every_token_has_the_bytes_the_tokenizer_writes(ckpt):
    tok = AutoTokenizer.from_pretrained(ckpt)
    vocab = byte_vocabulary(json.loads((ckpt / "tokenizer.json").read_text()))
    ids = {i: raw for raw, many in vocab.items() for i in many}
    special = set(tok.all_special_ids)
    assert not special & set(ids) and len(ids) == len(tok) - len(special)
    checked = 0
    for i, raw in ids.items():
        try:
            text = raw.decode()
        except UnicodeDecodeError:  # a piece of a character: no text of its own
            continue
        assert tok.decode([i]) == text, i
        checked += 1
    assert checked > len(ids) // 2
    with pytest.raises(GuideError, match="byte-level"):
        byte_vocabulary({"decoder": {"type": "Metaspace"}, "model": {"vocab": {}}})


def test_an_expression_that_cannot_guide_is_the_requests_error(engine, guides):
    with pytest.raises(GuideError):
        guides.index("(unclosed")
    with pytest.raises(ValueError, match="cannot be used"):
        engine.add_request(Request("bad", [5, 6, 7], SamplingParams(guide="(unclosed")))
    assert not engine.has_unfinished()
    unguided = Engine.__new__(Engine)
    unguided.guides = None
    with pytest.raises(ValueError, match="not available"):
        Engine._check_new(unguided, "r", 3, SamplingParams(guide=REGEX))


def prompt(n: int, seed: int) -> list[int]:
    return torch.randint(3, 400, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def guided_answer(engine: Engine, rid: str, ids: list[int], **params) -> list[int]:
    out = engine.generate([Request(rid, ids, SamplingParams(guide=REGEX, max_tokens=64, **params))])
    return out[rid]


def text_of(ckpt, tokens: list[int], eos: int) -> str:
    assert tokens[-1] == eos, "a guided answer ends with the end of sequence"
    return AutoTokenizer.from_pretrained(ckpt).decode(tokens[:-1])


def test_greedy_answers_are_transformers_under_the_same_automaton(engine, guides, ckpt, lm, hf):
    eos = guides.eos_token_id
    for seed in range(3):
        ids = prompt(20 + 7 * seed, seed)
        ours = guided_answer(engine, f"g{seed}", ids, temperature=0)
        automaton = Guide(Index(REGEX, guides.vocabulary))

        def allowed(
            batch: int, sofar: torch.Tensor, start: int = len(ids), g: Guide = automaton
        ) -> list[int]:
            if sofar.shape[0] > start:
                g.advance(int(sofar[-1]), return_tokens=False)
            return g.get_tokens()

        ref = hf_greedy(hf, ids, [], [], lm.config, 64, prefix_allowed_tokens_fn=allowed, eos_token_id=eos)
        assert ours == ref, seed
        text = text_of(ckpt, ours, eos)
        assert re.fullmatch(REGEX, text) and set(json.loads(text)) == set(SCHEMA["properties"])


def test_sampled_answers_match_the_expression_whatever_else_the_request_asks(engine, ckpt, guides):
    for seed in range(4):
        params = dict(temperature=1.0, seed=seed, ignore_eos=True, min_tokens=seed * 20)
        tokens = guided_answer(engine, f"s{seed}", prompt(12, 100 + seed), **params)
        text = text_of(ckpt, tokens, guides.eos_token_id)  # ends at EOS though ignore_eos and min_tokens
        assert re.fullmatch(REGEX, text), text
        assert json.loads(text)["level"] in ("low", "high")


def test_a_migrated_request_goes_on_in_its_automaton(engine, guides):
    """Resumed from the tokens it had streamed (at the end of its prompt, ``draw_offset``), a guided
    request finishes as it would have: the guide replays them."""
    ids = prompt(25, 7)
    whole = guided_answer(engine, "m0", ids, temperature=0)
    cut = len(whole) // 2
    rest = guided_answer(engine, "m1", ids + whole[:cut], temperature=0, draw_offset=cut)
    assert whole[:cut] + rest == whole


def test_compiling_in_the_background(ckpt, lm):
    """``ready`` starts the compile and says False until it is done; a failure is raised once."""
    import time

    guides = Guides.from_checkpoint(ckpt, lm.config.eos_token_ids[0])
    assert guides is not None
    assert guides.ready(REGEX) is False
    deadline = time.monotonic() + 60
    while not guides.ready(REGEX):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert guides.index(REGEX) is guides.index(REGEX)  # kept
    assert guides.ready("(unclosed") is False
    with pytest.raises(GuideError):
        while not guides.ready("(unclosed"):
            assert time.monotonic() < deadline
            time.sleep(0.01)
    engine = Engine.__new__(Engine)
    engine.guides = guides
    assert engine.guide_ready("") and engine.guide_ready(REGEX)
