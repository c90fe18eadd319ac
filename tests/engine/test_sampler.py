"""Sampling rules: greedy, temperature, top-k, top-p, min-p, seeds and logprobs."""

from __future__ import annotations

import math

import pytest
import torch

from shared.engine import cpu_kernels, sampler
from shared.engine.penalties import TokenHistory
from shared.engine.request import SamplingParams
from shared.engine.sampler import Sampler, draw_seed, inverse_cdf

pytestmark = pytest.mark.unit

# probabilities 0.5, 0.25, 0.125, 0.0625, 0.0625 for tokens 3, 0, 4, 1, 2
PROBS = torch.tensor([0.25, 0.0625, 0.0625, 0.5, 0.125])
LOGITS = PROBS.log()


def draw(params: SamplingParams, n: int = 4000, logits: torch.Tensor = LOGITS) -> torch.Tensor:
    """Token frequencies of n draws (one batch of n identical rows)."""
    sampler = Sampler(seed=0, device=torch.device("cpu"))
    out = sampler(logits.expand(n, -1), [params] * n, [None] * n, [0] * n)
    return torch.bincount(torch.tensor(out.token_ids), minlength=logits.shape[0]).float() / n


def test_greedy_is_argmax_of_each_row():
    sampler = Sampler(0, torch.device("cpu"))
    logits = torch.randn(6, 50)
    rows = [SamplingParams(temperature=0), SamplingParams(temperature=1.0, top_k=1)] * 3
    assert sampler(logits, rows, [None] * 6, [0] * 6).token_ids == logits.argmax(-1).tolist()


def test_temperature_one_follows_the_distribution():
    freq = draw(SamplingParams())
    assert torch.allclose(freq, PROBS, atol=0.03)


def test_temperature_sharpens_and_flattens():
    assert draw(SamplingParams(temperature=0.3))[3] > 0.85
    assert draw(SamplingParams(temperature=5.0))[3] < 0.3


def test_top_k_top_p_min_p_restrict_the_support():
    assert set(draw(SamplingParams(top_k=2)).nonzero()[:, 0].tolist()) == {0, 3}
    # top-p 0.7: 0.5 alone is not enough, 0.5 + 0.25 is; token 4 (0.125) is out
    assert set(draw(SamplingParams(top_p=0.7)).nonzero()[:, 0].tolist()) == {0, 3}
    assert set(draw(SamplingParams(top_p=0.76)).nonzero()[:, 0].tolist()) == {0, 3, 4}
    # min-p 0.2: tokens below 0.2 * 0.5 = 0.1 are out
    assert set(draw(SamplingParams(min_p=0.2)).nonzero()[:, 0].tolist()) == {0, 3, 4}
    kept = draw(SamplingParams(top_k=3, top_p=0.9))
    assert set(kept.nonzero()[:, 0].tolist()) == {0, 3, 4}
    assert torch.allclose(kept[[3, 0, 4]], torch.tensor([4 / 7, 2 / 7, 1 / 7]), atol=0.03)


def test_rows_with_and_without_ranked_filters_in_one_batch():
    """A top-k or top-p row keeps its support beside rows that sample the whole vocabulary."""
    n = 3000
    rows = [
        SamplingParams(top_k=2),
        SamplingParams(),
        SamplingParams(top_p=0.7),
        SamplingParams(min_p=0.2),
    ] * n
    out = Sampler(0, torch.device("cpu"))(
        LOGITS.expand(len(rows), -1), rows, [None] * len(rows), [0] * len(rows)
    )
    picked = torch.tensor(out.token_ids).view(n, 4)
    assert set(picked[:, 0].tolist()) == {0, 3} and set(picked[:, 2].tolist()) == {0, 3}
    assert set(picked[:, 3].tolist()) == {0, 3, 4}
    freq = torch.bincount(picked[:, 1], minlength=5).float() / n
    assert torch.allclose(freq, PROBS, atol=0.03)


def test_top_p_on_the_largest_logits_draws_what_the_whole_sorted_row_draws(monkeypatch: pytest.MonkeyPatch):
    """A peaked row's nucleus lies in its largest logits: top-p looks at those only (with the whole
    row's mass as the reference) and draws the same tokens as over the whole sorted row."""
    logits = 4 * torch.randn(8, 5000, generator=torch.Generator().manual_seed(1))
    rows = [SamplingParams(top_p=0.9, seed=s) for s in range(4)]
    rows += [SamplingParams(top_p=0.8, top_k=50, seed=4), SamplingParams(top_p=0.95, temperature=0.7, seed=5)]
    rows += [SamplingParams(top_p=0.9, min_p=0.01, seed=6), SamplingParams(top_k=300, seed=7)]

    def tokens() -> list[list[int]]:
        s = Sampler(0, torch.device("cpu"))
        return [
            s(logits, rows, [torch.Generator() for _ in rows], [n] * len(rows)).token_ids for n in range(40)
        ]

    shortlisted = tokens()
    monkeypatch.setattr(sampler, "TOP_P_CANDIDATES", 5001)  # never short: the whole row sorted
    assert tokens() == shortlisted
    assert len({t[0] for t in shortlisted}) > 3


def test_top_p_beyond_the_largest_logits_sorts_the_whole_row():
    """A flat row's nucleus is wider than the shortlist: the whole row is sorted, nothing is lost."""
    n = 4000
    out = draw(SamplingParams(top_p=0.5), n=n, logits=torch.zeros(3000))
    assert (out > 0).sum() > sampler.TOP_P_CANDIDATES  # ~1,400 of the 1,500 kept tokens show up


def test_parameters_at_the_edge_of_float32_still_draw_a_token():
    """Values the API accepts but float32 cannot hold (found by the HTTP fuzzer): a top-p that rounds
    to 0 keeps the most likely token, a temperature of 1e-300 is greedy, and a row of NaN logits
    still yields a token id of the vocabulary."""
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(5))
    best = logits.argmax(-1).tolist()
    for p in (
        SamplingParams(top_p=6.5e-248, min_p=0.02),
        SamplingParams(temperature=1e-300),
        SamplingParams(top_p=1e-40),
    ):
        assert Sampler(0, torch.device("cpu"))(logits, [p] * 3, [None] * 3, [0] * 3).token_ids == best
    nan = torch.full((2, 50), float("nan"))
    for p in (SamplingParams(), SamplingParams(top_p=0.9), SamplingParams(top_k=5)):
        assert all(
            0 <= t < 50 for t in Sampler(0, torch.device("cpu"))(nan, [p] * 2, [None] * 2, [0] * 2).token_ids
        )


def test_inverse_cdf_takes_the_column_whose_mass_holds_u():
    probs = torch.tensor([[0.0, 0.25, 0.0, 0.75, 0.0]] * 6)
    u = torch.tensor([0.0, 0.2499, 0.25, 0.5, 0.9999, 1 - 2**-24])
    assert inverse_cdf(probs, u).tolist() == [1, 1, 3, 3, 3, 3]
    # unnormalised rows, and a sum whose rounding could put u * sum on the last step: never a zero column
    assert inverse_cdf(
        torch.tensor([[0.0, 3.0, 0.0], [1e-30, 0.0, 0.0]]), torch.tensor([0.999999, 1 - 2**-24])
    ).tolist() == [1, 0]


def test_a_seed_reproduces_tokens_whatever_the_batch():
    logits = torch.randn(8, 100)
    p = SamplingParams(temperature=1.0, seed=42)
    alone = []
    gen = torch.Generator()
    for n in range(5):
        alone.append(Sampler(1, torch.device("cpu"))(logits[2:3], [p], [gen], [n]).token_ids[0])
    batched = []
    others = [
        SamplingParams(temperature=1.0, seed=s, top_k=4 * (s % 3), top_p=1 - 0.1 * (s % 2)) for s in range(8)
    ]
    for n in range(5):
        rows = others[:2] + [p] + others[3:]
        gens = [torch.Generator() for _ in rows]
        draws = [3 * i + n for i in range(8)]
        draws[2] = n
        batched.append(Sampler(n, torch.device("cpu"))(logits, rows, gens, draws).token_ids[2])
    assert alone == batched
    assert len(set(alone)) > 1


def test_the_c_argmax_picks_what_torch_argmax_picks():
    """Greedy rows beside sampled ones, with the C kernel and with torch."""
    logits = torch.randn(8, 300, generator=torch.Generator().manual_seed(3))
    logits[1, 7] = logits[1, 9] = 50.0  # a tie: the first index
    rows = [SamplingParams(temperature=0), SamplingParams(temperature=0)]
    rows += [SamplingParams(temperature=1.0, seed=s, top_p=0.9) for s in range(6)]

    def tokens(c_argmax: bool) -> list[int]:
        gens = [torch.Generator() for _ in rows]
        return Sampler(0, torch.device("cpu"), c_argmax=c_argmax)(logits, rows, gens, [0] * 8).token_ids

    assert Sampler(0, torch.device("cpu"), c_argmax=True).argmax is cpu_kernels.row_argmax
    assert tokens(c_argmax=True) == tokens(c_argmax=False)
    assert tokens(c_argmax=True)[1] == 7


def seeded_stream(logits: torch.Tensor, seed: int, gen: torch.Generator | None, n: int = 6) -> list[int]:
    """Tokens of draws 0 .. n-1 of one row; a fresh generator per draw when ``gen`` is None."""
    p = SamplingParams(temperature=1.0, seed=seed)
    sampler = Sampler(0, torch.device("cpu"))
    return [sampler(logits, [p], [gen or torch.Generator()], [i]).token_ids[0] for i in range(n)]


def test_a_seeded_draw_depends_on_the_seed_and_its_index_only():
    """Nothing of a generator's past matters: a fresh generator at draw n gives draw n's token."""
    logits = torch.randn(1, 1000)
    stream = seeded_stream(logits, 7, torch.Generator())
    assert stream == seeded_stream(logits, 7, None) and len(set(stream)) > 1
    assert seeded_stream(logits, 8, torch.Generator()) != stream


def test_draw_seeds_are_a_fixed_63_bit_function():
    """Engines of different versions must agree: the mix is pinned, not Python's hash()."""
    pinned = [6654738377353848610, 1437869018007346628, 8064577666737554293]
    assert [draw_seed(7, n) for n in range(3)] == pinned
    seeds = {draw_seed(s, n) for s in (0, 1, 7, (1 << 63) - 1) for n in range(100)}
    assert len(seeds) == 400 and all(0 <= x < 1 << 63 for x in seeds)


def test_logprobs_of_the_chosen_token_and_the_top_n():
    sampler = Sampler(0, torch.device("cpu"))
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.0, 0.0, 5.0, 0.0]])
    rows = [SamplingParams(temperature=0, logprobs=2), SamplingParams(temperature=0)]
    out = sampler(logits, rows, [None, None], [0, 0])
    ref = torch.log_softmax(logits[0], -1)
    assert out.token_ids == [1, 2]
    assert math.isclose(out.logprobs[0], ref[1].item(), rel_tol=1e-6)
    assert [t for t, _ in out.top_logprobs[0]] == [1, 2]
    assert out.top_logprobs[0][1][1] == pytest.approx(ref[2].item())
    assert out.logprobs[1] is None and out.top_logprobs[1] is None
    zero = sampler(logits[:1], [SamplingParams(temperature=0, logprobs=0)], [None], [0])
    assert zero.top_logprobs == [[]] and zero.logprobs[0] == pytest.approx(ref[1].item())


def test_invalid_parameters_are_refused():
    for bad in (dict(temperature=-1), dict(top_p=0), dict(top_k=-1), dict(min_p=2), dict(max_tokens=0)):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


def test_penalties_steer_greedy_rows_and_leave_logprobs_raw():
    logits = torch.tensor([[0.0, 3.0, 2.9, 0.0]])
    s = Sampler(0, torch.device("cpu"))
    plain = s(logits, [SamplingParams(temperature=0, logprobs=1)], [None], [0], [None])
    assert plain.token_ids == [1]
    p = SamplingParams(temperature=0, logprobs=1, frequency_penalty=0.2)
    steered = s(logits, [p], [None], [0], [TokenHistory([0, 1], 1, logits.device).sync()])  # 1 sampled once
    assert steered.token_ids == [2]
    assert steered.logprobs[0] == pytest.approx(torch.log_softmax(logits[0], -1)[2].item())
    with pytest.raises(ValueError, match="histories"):
        s(logits, [p], [None], [0])
    for bad in (dict(presence_penalty=2.5), dict(frequency_penalty=-3), dict(repetition_penalty=0)):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


def test_logit_bias_steers_every_row_and_leaves_logprobs_raw():
    logits = torch.tensor([[0.0, 3.0, 2.9, 0.0], [0.0, 3.0, 2.9, 0.0]])
    s = Sampler(0, torch.device("cpu"))
    rows = [
        SamplingParams(temperature=0, logprobs=0, logit_bias=((2, 0.5), (1, -0.25))),
        SamplingParams(temperature=0, logprobs=0),
    ]
    out = s(logits, rows, [None] * 2, [0] * 2)
    assert out.token_ids == [2, 1]
    assert out.logprobs[0] == pytest.approx(torch.log_softmax(logits[0], -1)[2].item())
    sampled = s(logits[:1], [SamplingParams(logit_bias=((0, 100.0),))], [None], [0])
    assert sampled.token_ids == [0]  # +100 on a logit of 0 against 3: e^-97 for the others
    steered = sampler.steer(logits, rows, [0, 0], ())
    assert torch.equal(steered[0], torch.tensor([0.0, 2.75, 3.4, 0.0])) and torch.equal(steered[1], logits[1])


def test_min_tokens_holds_back_stop_and_eos_tokens_until_reached():
    logits = torch.tensor([[0.0, 1.0, 5.0, 4.0, 3.0]])  # 2 then 3 then 4: the best tokens
    s = Sampler(0, torch.device("cpu"), eos_token_ids=(2,))
    held = SamplingParams(temperature=0, min_tokens=3, stop_token_ids=(3,))
    assert [s(logits, [held], [None], [n]).token_ids[0] for n in (0, 2, 3)] == [4, 4, 2]
    no_eos = SamplingParams(temperature=0, min_tokens=3, stop_token_ids=(3,), ignore_eos=True)
    assert s(logits, [no_eos], [None], [1]).token_ids == [2]  # EOS is not a stop token here
    # a migrated request counts the tokens of its earlier attempt (draws): past its min_tokens
    assert s(logits, [held], [None], [5]).token_ids == [2]
    sampled = s(logits.expand(500, -1), [SamplingParams(min_tokens=1)] * 500, [None] * 500, [0] * 500)
    assert 2 not in sampled.token_ids


def test_token_controls_are_checked():
    for bad in (
        dict(min_tokens=-1),
        dict(min_tokens=9, max_tokens=8),
        dict(logit_bias=((3, 101.0),)),
        dict(logit_bias=((-1, 1.0),)),
        dict(logit_bias=((3, math.nan),)),
    ):
        with pytest.raises(ValueError):
            SamplingParams(**bad)
    SamplingParams(min_tokens=9, max_tokens=4, draw_offset=5)  # a migrated request's remaining budget


def test_allowed_token_ids_rule_out_every_other_token():
    logits = torch.tensor([[0.0, 3.0, 2.9, 1.0, 5.0]])
    s = Sampler(0, torch.device("cpu"))
    only = SamplingParams(temperature=0, allowed_token_ids=(0, 2), logit_bias=((0, 3.0),))
    assert s(logits, [only], [None], [0]).token_ids == [0]  # 3.0 against 2.9: the bias counts
    sampled = s(
        logits.expand(400, -1), [SamplingParams(allowed_token_ids=(1, 3))] * 400, [None] * 400, [0] * 400
    )
    assert set(sampled.token_ids) == {1, 3}


def test_bad_words_rule_out_a_words_last_token_after_the_rest_of_it():
    logits = torch.tensor([[0.0, 5.0, 4.0, 3.0, 1.0]] * 3)
    s = Sampler(0, torch.device("cpu"))
    p = SamplingParams(temperature=0, bad_words=((1,), (0, 2), (3, 0, 3)))
    # token 1 always; 2 only after 0; 3 only after 3, 0 (the third row: 1, 2 and 3 out, 4 is next)
    got = s(logits, [p] * 3, [None] * 3, [0] * 3, recent=[[], [4, 0], [3, 0]]).token_ids
    assert got == [2, 3, 4]
    assert p.bad_words_reach == 2 and SamplingParams().bad_words_reach == 0 and not p.plain
    with pytest.raises(ValueError):
        SamplingParams(bad_words=((),))
