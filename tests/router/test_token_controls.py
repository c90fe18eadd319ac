"""logit_bias, min_tokens, stop_token_ids, include_stop_str_in_output, skip_special_tokens in the
router: what a request may ask
(``router.token_controls``), and what the answer's text holds (``router.generate``)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from router.detokenize import StopStrings
from router.generate import Generation
from router.jobs import Event
from router.prepare import Prepared
from router.protocol import APIError, CompletionRequest
from router.token_controls import bad_words, token_controls
from shared.engine import SamplingParams
from shared.wire.messages import FinishReason
from shared.wire.messages.prefill import MAX_LOGIT_BIAS
from tests.router.scripted import Scripted, demo_tokenizer

pytestmark = pytest.mark.unit

EOS = (7, 9)


def controls(max_tokens: int = 16, **fields: Any):
    req = CompletionRequest.model_validate({"model": "m", "prompt": "x", **fields})
    return token_controls(req, 100, max_tokens, EOS)


def refused(param: str, **fields: Any) -> str:
    with pytest.raises(APIError) as e:
        controls(**fields)
    assert e.value.status == 400 and e.value.param == param
    return e.value.message


def test_what_a_request_may_ask():
    c = controls(logit_bias={"3": 5.5, "42": -250, "0": 1e9}, min_tokens=16, stop_token_ids=[9, 4, 4])
    assert c.logit_bias == ((3, 5.5), (42, -100.0), (0, 100.0))  # clamped to -100..100, as vLLM does
    assert c.min_tokens == 16 and c.stop_token_ids == (9, 4, 7)  # the request's, then EOS not yet in
    assert controls(ignore_eos=True, stop_token_ids=[4]).stop_token_ids == (4,)
    assert controls().stop_token_ids == EOS and controls().logit_bias == ()
    assert "outside the vocabulary" in refused("logit_bias", logit_bias={"100": 1})
    assert "not a token id" in refused("logit_bias", logit_bias={"a": 1})
    refused("logit_bias", logit_bias={"-1": 1})
    refused("logit_bias", logit_bias={str(i): 1 for i in range(MAX_LOGIT_BIAS + 1)})
    assert controls(allowed_token_ids=[5, 3, 5]).allowed_token_ids == (5, 3)
    refused("allowed_token_ids", allowed_token_ids=[100])
    assert "must not exceed max_tokens (16)" in refused("min_tokens", min_tokens=17)
    refused("stop_token_ids", stop_token_ids=[100])
    refused("stop_token_ids", stop_token_ids=list(range(10, 73)))  # 63 and the two EOS: over 64
    with pytest.raises(ValueError):  # pydantic's own checks: a 400 before the router's
        CompletionRequest.model_validate({"model": "m", "prompt": "x", "min_tokens": -1})


def test_stop_strings_do_not_end_in_text_that_is_not_searched():
    s = StopStrings(["ab", "xyz"])
    assert s.push("cab x", search=False) == ("cab", False)  # two held: they may start one
    assert s.push("y") == (" ", False)
    assert s.push("z tail") == ("", True)  # "xyz" starts in the text not searched, ends after it
    s = StopStrings(["ab"])
    assert s.push("ab", search=False) == ("a", False) and s.push("c", final=True) == ("bc", False)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return demo_tokenizer()


def answer(
    tokenizer: Any, params: SamplingParams, stops: list[str], evs: list[Event], prep: Prepared | None = None
) -> tuple[str, str, int]:
    """(text, finish_reason, completion tokens) of a generation that receives ``evs``."""

    async def go() -> tuple[str, str, int]:
        backend = Scripted()
        gen = Generation(backend, tokenizer, prep or Prepared([1, 2, 3], [], params, stops), "r", 30.0)
        starting = asyncio.ensure_future(gen.start())
        await asyncio.sleep(0)
        for ev in evs:
            backend.jobs[0].sink(ev)
        await starting
        pieces = [p async for p in gen.pieces()]
        return "".join(p.text for p in pieces), pieces[-1].finish or "", gen.completion_tokens

    return asyncio.run(go())


def test_an_answer_that_a_stop_token_ends_holds_its_count_not_its_text(tokenizer):
    ids = tokenizer.encode(" one two", add_special_tokens=False)  # " one", " t", "w", "o"
    params = SamplingParams(max_tokens=8, stop_token_ids=(ids[3],))
    evs = [Event([(t, None)]) for t in ids[:3]] + [Event([(ids[3], None)], finish=FinishReason.STOP)]
    assert answer(tokenizer, params, [], evs) == (" one tw", "stop", 4)
    # the same token ending the answer by length is text (it was not sampled as a stop token)
    evs[-1] = Event([(ids[3], None)], finish=FinishReason.LENGTH)
    assert answer(tokenizer, params, [], evs) == (" one two", "length", 4)


def test_min_tokens_holds_back_the_stop_strings_of_the_first_tokens(tokenizer):
    ids = tokenizer.encode(" one two", add_special_tokens=False)
    evs = [Event([(t, None)]) for t in ids[:3]] + [Event([(ids[3], None)], finish=FinishReason.LENGTH)]
    plain, held = SamplingParams(max_tokens=4), SamplingParams(max_tokens=4, min_tokens=1)
    assert answer(tokenizer, plain, ["one"], evs) == (" ", "stop", 1)
    assert answer(tokenizer, held, ["one"], evs) == (" one two", "length", 4)
    # one that starts in those tokens' text and ends after it does stop the answer
    assert answer(tokenizer, held, ["e t"], evs) == (" on", "stop", 2)
    # four tokens in one event (a stream interval of 4): the boundary falls inside the event
    four = [Event([(t, None) for t in ids], finish=FinishReason.LENGTH)]
    assert answer(tokenizer, held, ["one"], four) == (" one two", "length", 4)
    assert answer(tokenizer, held, ["tw"], four) == (" one ", "stop", 4)


def test_the_stop_and_special_tokens_in_the_text_on_request(tokenizer):
    s = StopStrings(["tw", "o"], include=True)
    assert s.push(" one two", final=True) == (" o", True)  # the first stop string to start ends it
    ids = tokenizer.encode(" one two", add_special_tokens=False)
    stopped = [Event([(t, None)]) for t in ids[:3]] + [Event([(ids[3], None)], finish=FinishReason.STOP)]
    params = SamplingParams(max_tokens=8, stop_token_ids=(ids[3],))
    include = Prepared([1, 2, 3], [], params, [], include_stop=True)
    assert answer(tokenizer, include.params, [], stopped, include) == (" one two", "stop", 4)
    special = tokenizer.all_special_ids[0]
    evs = [Event([(ids[0], None), (special, None), (ids[1], None)], finish=FinishReason.LENGTH)]
    kept = Prepared([1, 2, 3], [], SamplingParams(max_tokens=3), [], skip_special_tokens=False)
    text = " one" + tokenizer.decode([special]) + " t"
    assert answer(tokenizer, kept.params, [], evs, kept) == (text, "length", 3)
    assert answer(tokenizer, kept.params, [], evs) == (" one t", "length", 3)


def test_bad_words_become_their_tokens_alone_and_after_a_space():
    tok = demo_tokenizer()
    req = CompletionRequest.model_validate({"model": "m", "prompt": "x", "bad_words": ["  two", "one"]})
    seqs = bad_words(req, tok)
    expected = []
    for word in ("two", "one"):
        for text in (word, " " + word):
            ids = tuple(tok.encode(text, add_special_tokens=False))
            if ids not in expected:
                expected.append(ids)
    assert seqs == tuple(expected) and len(seqs) == 4  # " two" is not "two" in this vocabulary
    for words in ([" "], [f"w{i}" for i in range(100)], ["a b " * 700]):  # empty, 200 sequences, 2,800 tokens
        with pytest.raises(APIError) as e:
            bad_words(
                CompletionRequest.model_validate({"model": "m", "prompt": "x", "bad_words": words}), tok
            )
        assert e.value.param == "bad_words"
