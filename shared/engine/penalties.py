"""Presence, frequency and repetition penalties, and the per-sequence token history they read.

vLLM's order: the repetition penalty on every token of the prompt and of the output (a positive
logit divided by it, a negative one multiplied, as transformers' ``RepetitionPenaltyLogitsProcessor``),
then OpenAI's frequency penalty times each token's count in the output and presence penalty once
for each token the output holds.

A ``TokenHistory`` keeps one sequence's distinct tokens and its output's counts as index tensors,
folding in only the tokens appended since the step before: a step costs O(new tokens) to keep it
and O(distinct tokens) to apply it, never O(length) or O(vocabulary) (at Qwen's 151,936 tokens a
pass over the vocabulary is a millisecond a row on a CPU).
"""

from __future__ import annotations

import torch

from shared.engine.request import SamplingParams


class _Column:
    """A growing 1-D tensor: ``values`` are the first ``n`` entries."""

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self.data = torch.zeros(64, dtype=dtype, device=device)
        self.n = 0

    def append(self, items: list[int]) -> None:
        if self.n + len(items) > self.data.numel():
            grown = torch.zeros(2 * (self.n + len(items)), dtype=self.data.dtype, device=self.data.device)
            grown[: self.n] = self.data[: self.n]
            self.data = grown
        self.data[self.n : self.n + len(items)] = torch.tensor(items, dtype=self.data.dtype)
        self.n += len(items)

    @property
    def values(self) -> torch.Tensor:
        return self.data[: self.n]


class TokenHistory:
    """One sequence's tokens as the penalties read them: its distinct tokens (prompt and output)
    and its output's distinct tokens with their counts. It holds the sequence's own token list,
    which only grows; ``sync`` folds in what was appended since the last call."""

    def __init__(self, token_ids: list[int], num_prompt: int, device: torch.device) -> None:
        """``num_prompt``: tokens before the first one the frequency and presence penalties count
        (a migrated request's prompt ends with the tokens it had sampled: those count)."""
        self.tokens = token_ids
        self.num_prompt = max(0, num_prompt)
        self.done = 0  # tokens folded in
        self._seen: set[int] = set()
        self.seen = _Column(torch.long, device)  # [distinct] every token of prompt and output
        self._slot: dict[int, int] = {}  # output token -> its row in out_ids / out_counts
        self.out_ids = _Column(torch.long, device)  # [distinct in the output]
        self.out_counts = _Column(torch.float32, device)  # [distinct in the output]

    def sync(self) -> TokenHistory:
        new = self.tokens[self.done :]
        if not new:
            return self
        fresh = [t for t in dict.fromkeys(new) if t not in self._seen]
        self._seen.update(fresh)
        self.seen.append(fresh)
        out_start = max(self.num_prompt - self.done, 0)
        counted: dict[int, int] = {}
        for t in new[out_start:]:
            counted[t] = counted.get(t, 0) + 1
        known = [(self._slot[t], c) for t, c in counted.items() if t in self._slot]
        if known:
            slots, adds = zip(*known, strict=True)
            at = torch.tensor(slots, device=self.out_counts.data.device)
            self.out_counts.data[at] += torch.tensor(adds, dtype=torch.float32, device=at.device)
        unknown = [t for t in counted if t not in self._slot]
        for t in unknown:
            self._slot[t] = len(self._slot)
        self.out_ids.append(unknown)
        self.out_counts.append([counted[t] for t in unknown])
        self.done = len(self.tokens)
        return self


def penalize(
    logits: torch.Tensor, params: list[SamplingParams], histories: list[TokenHistory | None] | None
) -> torch.Tensor:
    """The logits [R, V] with each row's penalties applied (a copy; rows without penalties as they
    were). ``histories``: each penalised row's, synced."""
    if histories is None:
        raise ValueError("penalties need each row's tokens (histories)")
    out = logits.clone()
    for i, p in enumerate(params):
        history = histories[i]
        if not p.penalized:
            continue
        if history is None:
            raise ValueError(f"row {i} has penalties and no history")
        # A sequence's ids are the vocabulary's: the services refuse any other before the engine.
        row = out[i]  # a view: written in place
        if p.repetition_penalty != 1:
            seen = history.seen.values
            x = row[seen]
            row[seen] = torch.where(x > 0, x / p.repetition_penalty, x * p.repetition_penalty)
        if p.frequency_penalty or p.presence_penalty:
            penalty = p.frequency_penalty * history.out_counts.values + p.presence_penalty
            row.index_add_(0, history.out_ids.values, penalty.to(logits.dtype), alpha=-1)
    return out
