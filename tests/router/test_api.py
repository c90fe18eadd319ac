"""The OpenAI API through a cluster started by ``epd up``: the official client (streaming and not,
text and base64 images), greedy parity with transformers, stop strings, completions, metrics."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
import torch

from shared.models.config import load_config
from shared.multimodal.prompt import PromptBuilder
from tests.disagg.conftest import Prompt, hf_generate, stop_ids
from tests.router.parity import (
    assert_greedy_matches_transformers,
    assert_guided_matches_transformers,
    assert_streaming_equals_non_streaming,
)

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def client(cluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=cluster.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_health_models_and_text_chat(cluster, client):
    assert httpx.get(cluster.url + "/health").json()["ready"] is True
    assert httpx.get(cluster.url + "/livez").json() == {"live": True}
    assert [m.id for m in client.models.list().data] == [cluster.model]
    out = client.chat.completions.create(
        model=cluster.model, messages=[{"role": "user", "content": "Say hi"}], max_tokens=6, temperature=0
    )
    assert out.choices[0].finish_reason in ("stop", "length") and isinstance(
        out.choices[0].message.content, str
    )
    assert out.usage.completion_tokens >= 1 and out.usage.prompt_tokens > 3
    print(f"\ntext answer: {out.choices[0].message.content!r} ({out.usage})")


def test_streaming_equals_non_streaming(cluster, client):
    assert_streaming_equals_non_streaming(client, cluster.model)


@pytest.mark.parametrize("n_images", [0, 1, 2])
def test_greedy_matches_transformers(cluster, client, ckpt, hf, n_images):
    text = assert_greedy_matches_transformers(client, cluster.model, ckpt, hf, n_images)
    print(f"\ncluster, {n_images} images: {text!r} == transformers")


def test_repetition_penalty_matches_transformers(cluster, client, ckpt, hf):
    """The penalty travels router -> prefill -> decode and steers greedy choices as transformers'."""
    plain = assert_greedy_matches_transformers(client, cluster.model, ckpt, hf, 1, max_tokens=12)
    steered = assert_greedy_matches_transformers(
        client, cluster.model, ckpt, hf, 1, max_tokens=12, repetition_penalty=2.0
    )
    assert steered != plain
    print(f"\nrepetition_penalty 2: {steered!r} == transformers (without: {plain!r})")


def test_logit_bias_and_min_tokens_match_transformers(cluster, client, ckpt, hf):
    """EOS biased to the top ends the answer at once; held back by min_tokens it comes right after
    them, as transformers' ``sequence_bias`` and ``min_new_tokens`` have it (greedy, token for token)."""
    messages = [{"role": "user", "content": "Count to ten"}]
    builder, cfg = PromptBuilder.from_checkpoint(ckpt), load_config(ckpt)
    prompt = Prompt(builder.build(messages, []).input_ids, [], [])
    eos = stop_ids(hf, cfg)[0]
    kw = dict(
        model=cluster.model, messages=messages, max_tokens=12, temperature=0, logit_bias={str(eos): 100}
    )
    at_once = client.chat.completions.create(**kw)
    assert (at_once.choices[0].message.content, at_once.usage.completion_tokens) == ("", 1)
    ref = hf_generate(hf, prompt, cfg, 12, sequence_bias={(eos,): 100.0}, min_new_tokens=5)
    assert len(ref) == 6 and ref[-1] == eos
    held = client.chat.completions.create(**kw, extra_body={"min_tokens": 5})
    assert held.choices[0].finish_reason == "stop" and held.usage.completion_tokens == 6
    assert held.choices[0].message.content == builder.tokenizer.decode(ref, skip_special_tokens=True)
    print(f"\nlogit_bias EOS +100, min_tokens 5: {held.choices[0].message.content!r} == transformers")


def test_bad_words_match_transformers(cluster, client, ckpt, hf):
    """A word of the greedy answer (two tokens of it, and one alone), banned: the answer is
    transformers' greedy answer with the same token sequences as ``bad_words_ids``."""
    messages = [{"role": "user", "content": "Count to ten"}]
    builder, cfg = PromptBuilder.from_checkpoint(ckpt), load_config(ckpt)
    tok, prompt = builder.tokenizer, Prompt(builder.build(messages, []).input_ids, [], [])
    kw = dict(model=cluster.model, messages=messages, max_tokens=12, temperature=0)
    plain = hf_generate(hf, prompt, cfg, 12, min_new_tokens=12)
    words = [tok.decode(plain[3:5]), tok.decode(plain[7:8])]
    sequences = []  # as the router makes them: each word alone and after a space
    for word in words:
        for text in (word.lstrip(), " " + word.lstrip()):
            ids = tok.encode(text, add_special_tokens=False)
            if ids not in sequences:
                sequences.append(ids)
    ref = hf_generate(hf, prompt, cfg, 12, bad_words_ids=sequences, min_new_tokens=12)
    assert ref != plain
    out = client.chat.completions.create(**kw, extra_body={"bad_words": words, "min_tokens": 12})
    assert out.choices[0].message.content == tok.decode(ref, skip_special_tokens=True)
    print(f"\nbad_words {words!r}: {out.choices[0].message.content!r} == transformers")


def test_allowed_token_ids_are_the_only_tokens_of_the_answer(cluster, client, ckpt):
    tokenizer = PromptBuilder.from_checkpoint(ckpt).tokenizer
    allowed = [tokenizer.convert_tokens_to_ids("x"), tokenizer.convert_tokens_to_ids("y")]
    out = client.chat.completions.create(
        model=cluster.model, messages=[{"role": "user", "content": "Go"}], max_tokens=6, temperature=1.0, seed=3,
        extra_body={"allowed_token_ids": allowed},
    )  # fmt: skip
    text = out.choices[0].message.content
    assert out.usage.completion_tokens == 6 and len(text) == 6 and set(text) <= {"x", "y"}


def test_stop_token_ids_end_the_answer_without_their_text(cluster, client, ckpt, hf):
    messages = [{"role": "user", "content": "Count to ten"}]
    builder, cfg = PromptBuilder.from_checkpoint(ckpt), load_config(ckpt)
    plain = hf_generate(hf, Prompt(builder.build(messages, []).input_ids, [], []), cfg, 8)
    # the first token not seen before it (past the first), or the first: where the answer must end
    k = next((i for i in range(1, len(plain)) if plain[i] not in plain[:i] + list(stop_ids(hf, cfg))), 0)
    out = client.chat.completions.create(
        model=cluster.model, messages=messages, max_tokens=8, temperature=0,
        extra_body={"stop_token_ids": [plain[k]]},
    )  # fmt: skip
    assert out.choices[0].finish_reason == "stop" and out.usage.completion_tokens == k + 1
    assert out.choices[0].message.content == builder.tokenizer.decode(plain[:k], skip_special_tokens=True)


def test_a_conversation_with_tools_matches_transformers(cluster, client, ckpt, hf):
    """Tools, an earlier tool call and its result reach the model as transformers' rendering of the
    same OpenAI messages has them: same prompt length, same greedy answer (no call in it: the
    random checkpoint calls nothing; the parsing is tests/router/test_tool_calls.py's)."""
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Bern"}'},
    }
    messages = [
        {"role": "user", "content": "Weather in Bern?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12 C"},
    ]
    builder, cfg = PromptBuilder.from_checkpoint(ckpt), load_config(ckpt)
    text = builder.tokenizer.apply_chat_template(
        messages, tools=[weather], add_generation_prompt=True, tokenize=False
    )
    ids = builder.tokenizer(text, add_special_tokens=False)["input_ids"]
    ref = hf_generate(hf, Prompt(ids, [], []), cfg, 8)
    out = client.chat.completions.create(
        model=cluster.model, messages=messages, tools=[weather], max_tokens=8, temperature=0
    )
    assert out.usage.prompt_tokens == len(ids) and out.usage.completion_tokens == len(ref)
    assert out.choices[0].message.content == builder.tokenizer.decode(ref, skip_special_tokens=True)
    assert out.choices[0].message.tool_calls is None


def test_json_schema_answers_match_transformers_under_the_same_automaton(cluster, client, ckpt, hf):
    """The guide travels router -> prefill (first token) -> decode (the rest, replaying the first)."""
    text = assert_guided_matches_transformers(client, cluster.model, ckpt, hf)
    print(f"\njson_schema answer: {text!r} == transformers")


def test_a_named_tool_choice_gets_one_call_of_that_tool(cluster, client):
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 8}},
                "required": ["city"],
            },
        },
    }
    kw = dict(
        model=cluster.model, messages=[{"role": "user", "content": "Weather in Bern?"}], tools=[weather],
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=60, temperature=0,
    )  # fmt: skip
    out = client.chat.completions.create(**kw)
    calls = out.choices[0].message.tool_calls
    assert out.choices[0].finish_reason == "tool_calls" and len(calls) == 1
    assert calls[0].function.name == "get_weather" and set(json.loads(calls[0].function.arguments)) == {
        "city"
    }
    chunks = list(client.chat.completions.create(**kw, stream=True))
    deltas = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or []) if c.choices]
    assert [(d.function.name, d.function.arguments) for d in deltas] == [
        ("get_weather", calls[0].function.arguments)
    ]
    print(f"\nforced call: {calls[0].function.arguments}")


def test_n_choices_are_the_seeded_requests_side_by_side(cluster, client):
    """n=3 with a seed: choice i is what one request with seed + i answers, streamed or not; the
    usage counts the prompt once and every choice's tokens."""
    kw = dict(
        model=cluster.model, messages=[{"role": "user", "content": "Go"}], max_tokens=6, temperature=1.0
    )
    single = [client.chat.completions.create(**kw, seed=40 + i) for i in range(3)]
    alone = [r.choices[0].message.content for r in single]
    whole = client.chat.completions.create(**kw, seed=40, n=3)
    assert [c.index for c in whole.choices] == [0, 1, 2]
    assert [c.message.content for c in whole.choices] == alone
    assert whole.usage.prompt_tokens == single[0].usage.prompt_tokens
    assert whole.usage.completion_tokens == sum(r.usage.completion_tokens for r in single)
    chunks = list(
        client.chat.completions.create(
            **kw, seed=40, n=3, stream=True, stream_options={"include_usage": True}
        )
    )
    streamed = ["", "", ""]
    for c in chunks:
        for choice in c.choices:
            streamed[choice.index] += choice.delta.content or ""
    assert streamed == alone and chunks[-1].usage == whole.usage
    legacy = client.completions.create(model=cluster.model, prompt="Once", max_tokens=4, n=2, temperature=0)
    assert [c.index for c in legacy.choices] == [0, 1] and legacy.choices[0].text == legacy.choices[1].text


def test_stop_string_cuts_the_answer(cluster, client):
    kw = dict(model=cluster.model, messages=[{"role": "user", "content": "Go"}], temperature=0)
    full = client.chat.completions.create(**kw, max_tokens=12, extra_body={"ignore_eos": True})
    text = full.choices[0].message.content
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip()
    cut = client.chat.completions.create(**kw, max_tokens=12, stop=[stop], extra_body={"ignore_eos": True})
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_completions_logprobs_and_metrics(cluster, client):
    out = client.completions.create(
        model=cluster.model, prompt="Once upon", max_tokens=4, temperature=0, logprobs=0
    )
    assert (
        out.usage.completion_tokens == len(out.choices[0].logprobs.token_logprobs)
        or out.choices[0].finish_reason == "stop"
    )
    chat = client.chat.completions.create(
        model=cluster.model, messages=[{"role": "user", "content": "x"}], max_tokens=3, logprobs=True, seed=1
    )
    assert all(t.logprob <= 0 for t in chat.choices[0].logprobs.content)
    metrics = httpx.get(cluster.url + "/metrics").text
    for name in ("router_ttft_seconds_bucket", "router_inter_token_seconds_bucket", "router_e2e_seconds_bucket",
                 "router_queue_depth", "router_requests_total", "router_stage_latency_seconds_bucket"):  # fmt: skip
        assert name in metrics, name


def test_a_batch_of_prompts_is_the_single_prompts_side_by_side(cluster, client, ckpt):
    """Completions with a batch of prompts (texts or token ids), n each: choice k * n + i is prompt
    k's i-th, as the prompt alone gives it (seeded: choice i with seed + i), streamed and not."""
    texts = ["Once upon", "The sky is"]
    kw = dict(model=cluster.model, max_tokens=5, temperature=1.0, extra_body={"ignore_eos": True})
    alone = [[client.completions.create(prompt=t, seed=11 + i, **kw) for i in range(2)] for t in texts]
    want = [alone[k][i].choices[0].text for k in range(2) for i in range(2)]
    batch = client.completions.create(prompt=texts, n=2, seed=11, **kw)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3] and [c.text for c in batch.choices] == want
    assert batch.usage.prompt_tokens == sum(a[0].usage.prompt_tokens for a in alone)
    assert batch.usage.completion_tokens == 20
    ids = [PromptBuilder.from_checkpoint(ckpt).tokenizer.encode(t, add_special_tokens=False) for t in texts]
    as_ids = client.completions.create(prompt=ids, n=2, seed=11, **kw)
    assert [c.text for c in as_ids.choices] == want
    streamed = ["", "", "", ""]
    for chunk in client.completions.create(prompt=texts, n=2, seed=11, stream=True, **kw):
        for c in chunk.choices:
            streamed[c.index] += c.text
    assert streamed == want


def test_top_logprobs_match_transformers(cluster, client, ckpt, hf):
    """Chosen and top-3 logprobs of a greedy answer equal transformers' log-softmax at each step."""
    messages = [{"role": "user", "content": "Name a colour"}]
    out = client.chat.completions.create(
        model=cluster.model, messages=messages, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    builder = PromptBuilder.from_checkpoint(ckpt)
    prompt = builder.build(messages, []).input_ids
    ids = torch.tensor(prompt + hf_generate(hf, Prompt(prompt, [], []), load_config(ckpt), 5))[None]
    with torch.inference_mode():
        ref = torch.log_softmax(hf(input_ids=ids).logits[0, len(prompt) - 1 : -1].float(), -1)
    content = out.choices[0].logprobs.content
    assert len(content) == 5
    for step, tok in enumerate(content):
        want = ref[step].topk(3)
        assert [t.logprob for t in tok.top_logprobs] == pytest.approx(want.values.tolist(), abs=1e-4)
        assert [t.token for t in tok.top_logprobs] == [builder.tokenizer.decode([i]) for i in want.indices]
        assert tok.token == tok.top_logprobs[0].token and tok.logprob == pytest.approx(
            want.values[0].item(), abs=1e-4
        )
    legacy = client.completions.create(
        model=cluster.model, prompt="Once upon", max_tokens=3, temperature=0, logprobs=2
    )
    lp = legacy.choices[0].logprobs
    assert len(lp.top_logprobs) == len(lp.tokens) and all(len(t) <= 2 for t in lp.top_logprobs)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    print(f"\ntop-3 logprobs of 5 greedy steps equal transformers' (first: {content[0].top_logprobs})")


def test_requests_with_and_without_logprobs_share_steps(cluster, client):
    """Decode steps that mix requests with and without logprobs deliver every token to both."""
    from concurrent.futures import ThreadPoolExecutor

    def ask(logprobs: bool) -> int:
        out = client.chat.completions.create(
            model=cluster.model, messages=[{"role": "user", "content": "Go on"}], max_tokens=24, temperature=0,
            logprobs=logprobs, top_logprobs=2 if logprobs else None, extra_body={"ignore_eos": True},
        )  # fmt: skip
        assert (out.choices[0].logprobs is not None) == logprobs
        return out.usage.completion_tokens

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(ask, [True, False, True, False])) == [24] * 4
