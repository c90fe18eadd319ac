"""Penalties: transformers' repetition penalty, OpenAI's frequency and presence penalties, and the
token history that keeps them O(new tokens) a step."""

from __future__ import annotations

import random

import pytest
import torch

from shared.engine.penalties import TokenHistory, penalize
from shared.engine.request import SamplingParams

pytestmark = pytest.mark.unit

CPU = torch.device("cpu")


def test_repetition_penalty_is_transformers_and_openais_penalties_count_the_output():
    from transformers import RepetitionPenaltyLogitsProcessor

    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 40, generator=g)
    tokens = [7, 3, 3, 12, 30, 3, 7, 3]  # 5 prompt tokens, then 3 sampled: 3, 7, 3
    rows = [
        SamplingParams(temperature=0, repetition_penalty=1.7),
        SamplingParams(temperature=0, frequency_penalty=0.5, presence_penalty=-1.25),
        SamplingParams(temperature=0),
    ]
    histories = [TokenHistory(tokens, 5, CPU).sync(), TokenHistory(tokens, 5, CPU).sync(), None]
    out = penalize(logits, rows, histories)
    ref = RepetitionPenaltyLogitsProcessor(1.7)(torch.tensor([tokens]), logits[:1].clone())
    assert torch.equal(out[0], ref[0])
    expected = logits[1].clone()
    for token, count in ((3, 2), (7, 1)):  # the output's tokens only (not 12 or 30)
        expected[token] -= 0.5 * count - 1.25
    assert torch.allclose(out[1], expected) and torch.equal(out[2], logits[2])
    assert not torch.equal(logits[0], out[0])  # the caller's logits are left alone
    with pytest.raises(ValueError, match="no history"):
        penalize(logits, rows, [None] * 3)


def dense(logits: torch.Tensor, p: SamplingParams, tokens: list[int], num_prompt: int) -> torch.Tensor:
    """The penalties over the whole vocabulary, from the whole history: the reference."""
    row = logits.clone()
    ids = torch.tensor(tokens)
    seen = torch.zeros(row.shape[0], dtype=torch.bool)
    seen[ids] = True
    row[seen] = torch.where(row[seen] > 0, row[seen] / p.repetition_penalty, row[seen] * p.repetition_penalty)
    counts = torch.bincount(ids[num_prompt:], minlength=row.shape[0]).float()
    return row - p.frequency_penalty * counts - p.presence_penalty * (counts > 0).float()


@pytest.mark.parametrize("num_prompt", [0, 1, 9])
def test_a_history_kept_step_by_step_penalises_as_the_whole_history_does(num_prompt):
    """Tokens appended one or several at a time, repeats included, a prompt boundary that falls
    inside a sync: after each sync the penalties equal the dense ones computed from scratch."""
    rng = random.Random(num_prompt)
    vocab = 400
    p = SamplingParams(repetition_penalty=1.3, frequency_penalty=0.4, presence_penalty=-0.7)
    tokens = [rng.randrange(vocab) for _ in range(num_prompt)]
    history = TokenHistory(tokens, num_prompt, CPU)
    logits = torch.randn(1, vocab, generator=torch.Generator().manual_seed(num_prompt))
    for _ in range(120):  # past the columns' first 64 entries: they grow
        new = rng.choice([1, 1, 3])
        tokens += [
            rng.choice(tokens) if tokens and rng.random() < 0.5 else rng.randrange(vocab) for _ in range(new)
        ]
        got = penalize(logits, [p], [history.sync()])[0]
        torch.testing.assert_close(got, dense(logits[0], p, tokens, num_prompt), rtol=0, atol=1e-5)
    assert (
        history.seen.n == len(set(tokens)) > 64
        and history.out_counts.values.sum() == len(tokens) - num_prompt
    )
