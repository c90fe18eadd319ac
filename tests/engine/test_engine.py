"""The engine end to end on the tiny model: chunking, stop conditions, aborts, admission checks."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from shared.engine import Engine, EngineConfig, FinishReason, Request, SamplingParams
from shared.models.qwen3_vl_moe import ImageFeature
from tests.engine.prompts import Picture, build, request
from tests.models.runner import prompt_logits

pytestmark = pytest.mark.unit

GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


def run(engine: Engine, reqs: list[Request]) -> dict[str, list]:
    """All outputs per request, in order."""
    outs: dict[str, list] = {r.request_id: [] for r in reqs}
    for r in reqs:
        engine.add_request(r)
    while engine.has_unfinished():
        for o in engine.step():
            outs[o.request_id].append(o)
    return outs


@pytest.mark.parametrize("chunk", [7, 64, 1024])
def test_chunked_prefill_gives_the_logits_of_one_pass(chunk, lm, vision):
    """A prompt with images cut by chunk boundaries: first-token logprobs equal the reference's."""
    prompt = build([30, Picture((1, 16, 16), 1), 9, Picture((1, 8, 12), 2), 25], lm.config)
    req = request("a", prompt, lm.config, vision, SamplingParams(temperature=0, max_tokens=1, logprobs=20))
    config = EngineConfig(
        block_size=16, num_blocks=64, prefill_chunk_size=chunk, max_num_batched_tokens=chunk, max_num_seqs=4
    )
    out = run(Engine(lm, config), [req])["a"][0]
    feats = [ImageFeature(i.embeds, i.deepstack) for i in req.images]
    ref = torch.log_softmax(prompt_logits(lm, torch.tensor(prompt.ids), req.positions, feats)[-1], -1)
    top = ref.topk(20)
    assert [t for t, _ in out.top_logprobs] == top.indices.tolist()
    torch.testing.assert_close(
        torch.tensor([lp for _, lp in out.top_logprobs]), top.values, atol=1e-4, rtol=0
    )
    assert out.token_id == int(ref.argmax()) and out.finish_reason is FinishReason.LENGTH


def test_stop_conditions(lm):
    engine = Engine(lm, EngineConfig(num_blocks=64, max_model_len=40))
    ids = build([12], lm.config).ids
    free_run = run(engine, [Request("free", ids, GREEDY)])["free"]
    tokens = [o.token_id for o in free_run]
    stop_at = tokens[3]
    reqs = [
        Request("stop", ids, SamplingParams(temperature=0, max_tokens=8, stop_token_ids=(stop_at,))),
        Request("len", ids, SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)),
        Request("model_len", ids, SamplingParams(temperature=0, max_tokens=100, ignore_eos=True)),
    ]
    outs = run(engine, reqs)
    stop = outs["stop"]
    assert [o.token_id for o in stop] == tokens[: tokens.index(stop_at) + 1]
    assert stop[-1].finish_reason is FinishReason.STOP and not any(o.finished for o in stop[:-1])
    length = outs["len"]
    assert [o.token_id for o in length] == tokens[:5] and length[-1].finish_reason is FinishReason.LENGTH
    assert len(outs["model_len"]) == 40 - 12 and outs["model_len"][-1].finish_reason is FinishReason.LENGTH
    assert engine.num_free_blocks == 64


def test_eos_stops_unless_ignored(lm):
    engine = Engine(lm, EngineConfig(num_blocks=64))
    ids = build([12], lm.config).ids
    tokens = [o.token_id for o in run(engine, [Request("a", ids, GREEDY)])["a"]]
    engine.eos_token_ids = frozenset({tokens[2]})  # pretend the third token is the model's EOS
    outs = run(engine, [Request("eos", ids, SamplingParams(temperature=0, max_tokens=8))])["eos"]
    assert [o.token_id for o in outs] == tokens[: tokens.index(tokens[2]) + 1]
    assert outs[-1].finish_reason is FinishReason.STOP
    assert [o.token_id for o in run(engine, [Request("b", ids, GREEDY)])["b"]] == tokens


def test_abort_in_every_state_frees_everything(lm):
    config = EngineConfig(
        block_size=4, num_blocks=40, prefill_chunk_size=8, max_num_batched_tokens=8, max_num_seqs=2
    )
    engine = Engine(lm, config)
    mk = lambda rid, n, **kw: Request(rid, build([n], lm.config, seed=n).ids, GREEDY, **kw)  # noqa: E731
    for r in (mk("decoding", 5), mk("prefilling", 60), mk("waiting", 7), mk("held", 9, prefill_only=True)):
        engine.add_request(r)
    engine.step()
    engine.step()
    states = {rid: (s.status.value, s.num_uncomputed_tokens) for rid, s in engine.seqs.items()}
    assert states["decoding"] == ("running", 1) and states["prefilling"][0] == "running"
    assert states["prefilling"][1] > 1 and states["waiting"][0] == "waiting"
    assert engine.abort("decoding") and engine.abort("prefilling") and engine.abort("waiting")
    assert not engine.abort("decoding") and not engine.abort("never-seen")
    while engine.has_unfinished():
        engine.step()
    assert engine.seqs["held"].status.value == "finished" and engine.num_free_blocks < 40
    engine.abort("held")
    assert engine.num_free_blocks == 40 and not engine.seqs and not engine.has_unfinished()


def test_requests_that_cannot_run_are_refused(lm):
    engine = Engine(lm, EngineConfig(block_size=4, num_blocks=10, max_model_len=64))
    ok = build([10], lm.config).ids
    engine.add_request(Request("a", ok, GREEDY))
    with pytest.raises(ValueError, match="already"):
        engine.add_request(Request("a", ok, GREEDY))
    with pytest.raises(ValueError, match="blocks"):
        engine.add_request(Request("big", ok, SamplingParams(max_tokens=31)))
    with pytest.raises(ValueError, match="prompt tokens"):
        engine.add_request(Request("long", build([64], lm.config).ids, GREEDY))
    with pytest.raises(ValueError, match="image tokens without"):
        engine.add_request(
            Request("img", [*ok, lm.config.image_token_id], GREEDY, torch.zeros(3, 11, dtype=torch.long))
        )
    with pytest.raises(ValueError, match="empty"):
        engine.add_request(Request("empty", [], GREEDY))
    assert list(engine.seqs) == ["a"]


def test_prefix_cache_reuses_and_evicts(lm):
    engine = Engine(
        lm,
        EngineConfig(
            block_size=4, num_blocks=20, prefill_chunk_size=8, max_num_batched_tokens=8, max_num_seqs=4
        ),
    )
    ids = build([33], lm.config).ids
    first = run(engine, [Request("a", ids, GREEDY)])["a"]
    second = run(engine, [Request("b", ids, GREEDY)])["b"]
    assert [o.token_id for o in first] == [o.token_id for o in second]
    assert engine.scheduler.num_cached_tokens == 32  # 8 blocks of the 33-token prompt
    other = build([70], lm.config, seed=5).ids  # needs 20 blocks: evicts every cached block
    run(engine, [Request("c", other, SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))])
    run(engine, [Request("d", ids, GREEDY)])
    assert engine.scheduler.num_cached_tokens == 32  # no new hit
    assert engine.num_free_blocks == 20


@pytest.mark.parametrize(
    "params", [GREEDY, SamplingParams(temperature=1.0, seed=7, max_tokens=8, ignore_eos=True)]
)
def test_a_request_resumed_from_its_streamed_tokens_goes_on_as_before(params, lm):
    """A migrated request (``draw_offset``): its prompt plus the first k tokens it produced, asked
    for the rest, gives the tokens the undisturbed run gave after those k (seeded draws included)."""
    ids = build([20], lm.config, seed=3).ids
    config = EngineConfig(block_size=16, num_blocks=64)
    outs = run(Engine(lm, config), [Request("a", ids, params)])["a"]
    assert [o.index for o in outs] == list(range(params.max_tokens))
    whole = [o.token_id for o in outs]
    for k in (1, 5):
        rest = replace(params, max_tokens=params.max_tokens - k, draw_offset=k)
        resumed = run(Engine(lm, config), [Request("b", ids + whole[:k], rest)])["b"]
        assert [o.token_id for o in resumed] == whole[k:]


def test_min_tokens_and_logit_bias_through_the_engine(lm):
    """EOS biased to the top ends the answer at once, unless min_tokens holds it back: then it
    comes right after, and the engine stops on it there and not before."""
    engine = Engine(lm, EngineConfig(num_blocks=64))
    eos = 5
    engine.eos_token_ids = engine.sampler.eos_token_ids = frozenset({eos})
    ids = build([12], lm.config).ids
    bias = ((eos, 100.0),)
    params = SamplingParams(temperature=0, max_tokens=8, logit_bias=bias)
    assert [o.token_id for o in run(engine, [Request("a", ids, params)])["a"]] == [eos]
    held = run(engine, [Request("b", ids, replace(params, min_tokens=3))])["b"]
    assert [o.token_id for o in held][3:] == [eos] and eos not in [o.token_id for o in held[:3]]
    assert held[-1].finish_reason is FinishReason.STOP
    # a stop token of the request's own is held back as well, ignore_eos or not
    own = replace(params, min_tokens=2, stop_token_ids=(eos,), ignore_eos=True)
    assert [o.token_id for o in run(engine, [Request("c", ids, own)])["c"]][2:] == [eos]
