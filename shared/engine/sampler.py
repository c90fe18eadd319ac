"""Turning one step's logits into tokens: greedy, temperature, top-k, top-p, min-p, seeds, logprobs.

Rows are processed together; only the random draws are per row. Order of the filters:
temperature, then top-k, then top-p over what top-k kept, then min-p relative to the most likely
token. A row is greedy when its temperature is below 1e-5 (0 included) or its top-k is 1: plain
argmax of the logits (after the bias, mask and penalties below, if it has any).

A sampled row draws one uniform number u and takes the first token whose cumulative probability
exceeds u times the row's total (inverse transform sampling): one random number a row, where an
exponential race (``argmax(p / e)``, ``e ~ Exp(1)`` per token) would draw one per vocabulary entry,
which on a CPU costs milliseconds a row at Qwen's 151,936 tokens. Nothing sorts the whole
vocabulary unless it must: top-k takes the k largest, top-p the 1,024 largest when they hold the
nucleus (a trained model's rows are peaked; else the row is sorted), and min-p compares with the
row's maximum. ``logit_bias``, ``allowed_token_ids``, ``min_tokens`` and a guide (``steer``), then the penalties (presence,
frequency, repetition: ``shared.engine.penalties``) change the logits both greedy and sampled rows choose from.
Logprobs are those of the raw logits (before all of these, temperature and filters), as vLLM
reports them by default.

Seeds: the n-th token of a request with a seed (n = tokens it sampled before, counting those of
an earlier attempt: ``SamplingParams.draw_offset``) is drawn from its generator reseeded with
``draw_seed(seed, n)``, so its whole random state is two integers that
every engine derives from the sequence itself; nothing of a generator travels. Guarantee: a
seeded request's tokens depend only on its seed, prompt and sampling parameters and on the
device kind that samples each step, not on its batch companions, and a request handed between
engines of the same device kind, or re-run elsewhere from its prompt and the tokens it had
streamed (a migrated request), gets exactly the tokens one engine gives. CPU and CUDA generators
give different streams, so a CPU-prefill/GPU-decode split reproduces only runs with the same split.
Rows without a seed share the sampler's generator.

Shape legend: R rows (sequences that sample this step), V vocabulary.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch

from shared.engine import cpu_kernels
from shared.engine.guided import GuideState, banned_tokens
from shared.engine.penalties import TokenHistory, penalize
from shared.engine.request import SamplingParams

log = logging.getLogger(__name__)

_MASK64 = (1 << 64) - 1
TOP_P_CANDIDATES = 1024  # the largest logits top-p looks at first (Sampler._ranked)


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def draw_seed(seed: int, draw: int) -> int:
    """The generator seed of a seeded request's ``draw``-th token: a stable 63-bit mix of the two."""
    return _splitmix64((_splitmix64(seed & _MASK64) + draw) & _MASK64) >> 1


@dataclass
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[float | None]
    top_logprobs: list[list[tuple[int, float]] | None]


def _torch_argmax(x: torch.Tensor) -> torch.Tensor:
    return x.argmax(dim=-1)


class Sampler:
    def __init__(
        self, seed: int, device: torch.device, c_argmax: bool = False, eos_token_ids: Collection[int] = ()
    ) -> None:
        """``c_argmax``: take each row's argmax with the C kernel of ``cpu_kernels`` (a CPU engine
        that runs its C kernels; torch's CPU argmax goes one element at a time) where it builds.
        ``eos_token_ids``: the model's, which ``min_tokens`` holds back unless a row ignores EOS."""
        self.generator = torch.Generator(device).manual_seed(seed)  # for rows without a seed
        self.eos_token_ids = tuple(eos_token_ids)
        self.argmax: Callable[[torch.Tensor], torch.Tensor] = _torch_argmax
        if c_argmax:
            if reason := cpu_kernels.argmax_kernel():
                log.warning("sampler: torch's argmax, not the C kernel: %s", reason)
            else:
                self.argmax = cpu_kernels.row_argmax

    @torch.inference_mode()
    def __call__(
        self,
        logits: torch.Tensor,  # [R, V] float32
        params: list[SamplingParams],
        generators: list[torch.Generator | None],  # a seeded row's own generator, reseeded per draw
        draws: list[int],  # tokens each row's request sampled before this step
        histories: list[TokenHistory | None] | None = None,  # each penalised row's, synced
        guides: list[GuideState | None] | None = None,  # each guided row's, synced
        recent: list[list[int]] | None = None,  # each row's last output tokens (``bad_words_reach``)
    ) -> SamplerOutput:
        chosen_from = logits
        if not all(p.plain for p in params):
            if any(p.steered(d) for p, d in zip(params, draws, strict=True)):
                chosen_from = steer(logits, params, draws, self.eos_token_ids, guides, recent)
            if any(p.penalized for p in params):
                chosen_from = penalize(chosen_from, params, histories)
        random_rows = [i for i, p in enumerate(params) if not p.greedy]
        if len(random_rows) == len(params):  # every row samples: no argmax, no row selection
            tokens = self._sample(chosen_from, params, generators, draws)
        else:
            tokens = self.argmax(chosen_from)  # [R]
            if random_rows:
                _sample_into(tokens, random_rows, self._sample, chosen_from, params, generators, draws)
        token_list = tokens.tolist()
        logprobs: list[float | None] = [None] * len(params)
        tops: list[list[tuple[int, float]] | None] = [None] * len(params)
        want = [i for i, p in enumerate(params) if p.logprobs is not None]
        if want:
            rows = torch.tensor(want, device=logits.device)
            lp = torch.log_softmax(logits[rows], dim=-1)  # [r, V]
            chosen_lp = lp.gather(1, tokens[rows][:, None])[:, 0].tolist()
            n_max = max(params[i].logprobs or 0 for i in want)
            top_v, top_i = lp.topk(min(n_max, lp.shape[1]), dim=-1)  # n_max may be 0: empty
            for j, i in enumerate(want):
                logprobs[i] = chosen_lp[j]
                n = params[i].logprobs or 0
                tops[i] = list(zip(top_i[j, :n].tolist(), top_v[j, :n].tolist(), strict=True))
        return SamplerOutput(token_list, logprobs, tops)

    def _sample(
        self,
        logits: torch.Tensor,  # [r, V]
        params: list[SamplingParams],
        generators: list[torch.Generator | None],
        draws: list[int],
    ) -> torch.Tensor:
        """The sampled rows' tokens [r]. Rows with a top-k or top-p and rows without are sampled
        apart: the first look at ranked candidates, the others at the vocabulary in token order."""
        vocab = logits.shape[1]
        ranked = [i for i, p in enumerate(params) if p.top_p < 1 or 0 < p.top_k < vocab]
        if not ranked or len(ranked) == len(params):
            return self._sample_rows(logits, params, generators, draws)
        out = torch.empty(len(params), dtype=torch.long, device=logits.device)
        plain = sorted(set(range(len(params))) - set(ranked))
        for group in (ranked, plain):
            _sample_into(out, group, self._sample_rows, logits, params, generators, draws)
        return out

    def _sample_rows(
        self,
        logits: torch.Tensor,  # [r, V]
        params: list[SamplingParams],
        generators: list[torch.Generator | None],
        draws: list[int],
    ) -> torch.Tensor:
        dev = logits.device
        vocab = logits.shape[1]
        x = logits
        if any(p.temperature != 1 for p in params):
            x = x / torch.tensor([p.temperature for p in params], device=dev)[:, None]
        ids: torch.Tensor | None = None  # None: the whole vocabulary, in token order
        if any(p.top_p < 1 or 0 < p.top_k < vocab for p in params):
            x, ids = self._ranked(x, params)
        probs = x.softmax(dim=-1)  # [r, c]
        if any(p.min_p > 0 for p in params):
            min_p = torch.tensor([p.min_p for p in params], device=dev)
            peak = probs.amax(dim=-1, keepdim=True)
            probs = probs.masked_fill(probs < min_p[:, None] * peak, 0.0)  # the peak always stays
        picked = inverse_cdf(probs, self._uniforms(params, generators, draws))  # [r] chosen columns
        return picked if ids is None else ids.gather(1, picked[:, None])[:, 0]

    def _ranked(self, x: torch.Tensor, params: list[SamplingParams]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows with a top-k or top-p: their candidates [r, c] in descending order with their token
        ids [r, c], the ones top-k and top-p cut set to -inf. The candidates are the k largest when
        every row has a top-k; the ``TOP_P_CANDIDATES`` largest when those hold every top-p row's
        nucleus (their share of the row's whole mass reaches its top-p, as a trained model's peaked
        rows do); else the whole sorted row."""
        dev, vocab = x.device, x.shape[1]
        ks = [min(p.top_k or vocab, vocab) for p in params]  # vocab: no top-k
        top_p = any(p.top_p < 1 for p in params)
        # [r] the log of each row's whole mass, when the candidates are cut short
        whole: torch.Tensor | None = None
        if max(ks) < vocab:
            x, ids = x.topk(max(ks), dim=-1)
        elif max((k for k in ks if k < vocab), default=0) <= TOP_P_CANDIDATES < vocab:
            norm = torch.logsumexp(x, dim=-1)
            top, top_ids = x.topk(TOP_P_CANDIDATES, dim=-1)
            share = (top - norm[:, None]).exp().sum(dim=-1).tolist()
            if all(k < vocab or s >= p.top_p for k, s, p in zip(ks, share, params, strict=True)):
                x, ids, whole = top, top_ids, norm
            else:
                x, ids = x.sort(dim=-1, descending=True)
        else:
            x, ids = x.sort(dim=-1, descending=True)
        if min(ks) < vocab:
            k = torch.tensor(ks, device=dev)
            x = x.masked_fill(torch.arange(x.shape[1], device=dev)[None, :] >= k[:, None], float("-inf"))
        if top_p:
            norm = torch.logsumexp(x, dim=-1)  # [r] the kept candidates' mass: a top-k row's own
            if whole is not None:  # a row without a top-k: its whole row's
                norm = torch.where(torch.tensor([k == vocab for k in ks], device=dev), whole, norm)
            probs = (x - norm[:, None]).exp()  # [r, c]
            mass_before = probs.cumsum(dim=-1) - probs
            limit = torch.tensor([p.top_p for p in params], device=dev)
            cut = mass_before >= limit[:, None]  # a top-p that rounds to 0 in float32 cuts all ...
            cut[:, 0] = False  # ... but the most likely token always stays
            x = x.masked_fill(cut, float("-inf"))
        return x, ids

    def _uniforms(
        self, params: list[SamplingParams], generators: list[torch.Generator | None], draws: list[int]
    ) -> torch.Tensor:
        """One uniform number in [0, 1) per row [r]: a seeded row's from its generator reseeded for
        this draw, the others' from the sampler's generator."""
        u = torch.rand(len(params), device=self.generator.device, generator=self.generator)
        for i, (g, p) in enumerate(zip(generators, params, strict=True)):
            if g is not None and p.seed is not None:
                g.manual_seed(draw_seed(p.seed, draws[i]))
                u[i] = torch.rand(1, device=u.device, generator=g)[0]
        return u


def _sample_into(
    tokens: torch.Tensor,  # [R] written at ``rows``
    rows: list[int],
    sample: Callable[
        [torch.Tensor, list[SamplingParams], list[torch.Generator | None], list[int]], torch.Tensor
    ],
    logits: torch.Tensor,  # [R, V]
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
    draws: list[int],
) -> None:
    """``sample`` the given rows of a batch and write their tokens into ``tokens``."""
    at = torch.tensor(rows, device=logits.device)
    tokens[at] = sample(
        logits[at], [params[i] for i in rows], [generators[i] for i in rows], [draws[i] for i in rows]
    )


def steer(
    logits: torch.Tensor, params: list[SamplingParams], draws: list[int], eos_token_ids: Collection[int],
    guides: list[GuideState | None] | None = None, recent: list[list[int]] | None = None,
) -> torch.Tensor:  # fmt: skip
    """The logits [R, V] with each row's ``logit_bias`` added, the tokens outside its
    ``allowed_token_ids`` (if it has any) set to -inf and, while a row has sampled fewer than its
    ``min_tokens``, its stop tokens (and the model's end-of-sequence tokens unless it
    ignores EOS) set to -inf, and the last token of each of its ``bad_words`` whose other tokens
    end its output (``recent``: each row's last output tokens) set to -inf (a copy; other rows as
    they were); then the tokens its guide's state does not allow (``guides``: a state per row,
    None for unguided rows) set to -inf. Where the rest left the guide nothing, the guide alone
    decides. vLLM applies all of these before the
    penalties, and so do greedy rows."""
    out = logits.clone()
    vocab = logits.shape[1]
    for i, (p, drawn) in enumerate(zip(params, draws, strict=True)):
        if p.logit_bias:
            ids = [t for t, _ in p.logit_bias if t < vocab]  # the router checked them; kept safe anyway
            bias = [b for t, b in p.logit_bias if t < vocab]
            if ids:
                at = torch.tensor(ids, device=logits.device)
                out[i, at] += torch.tensor(bias, dtype=logits.dtype, device=logits.device)
        if p.allowed_token_ids:
            allowed = torch.tensor([t for t in p.allowed_token_ids if t < vocab], device=logits.device)
            kept = out[i, allowed]
            out[i] = float("-inf")
            out[i, allowed] = kept
        if drawn < p.min_tokens:
            held = [t for t in {*p.stop_token_ids, *(() if p.ignore_eos else eos_token_ids)} if t < vocab]
            if held:
                out[i, torch.tensor(held, device=logits.device)] = float("-inf")
        if p.bad_words:
            tail = recent[i] if recent is not None else []
            ruled_out = {w[-1] for w in p.bad_words if w[-1] < vocab and _ends_with(tail, w[:-1])}
            if ruled_out:
                out[i, torch.tensor(sorted(ruled_out), device=logits.device)] = float("-inf")
    guided = [(i, state) for i, state in enumerate(guides or []) if state is not None]
    if guided:
        banned = banned_tokens([state for _, state in guided], vocab, logits.device)  # [g, V]
        for j, (i, _) in enumerate(guided):  # in place, row by row: no copy of the rows
            row = out[i].masked_fill_(banned[j], float("-inf"))
            p = params[i]
            # what else sets -inf: allowed tokens, bad words, min_tokens
            masked = bool(p.allowed_token_ids or p.bad_words) or draws[i] < p.min_tokens
            if masked and row.max() == float("-inf"):  # and it left the guide nothing
                row.copy_(logits[i]).masked_fill_(banned[j], float("-inf"))
    return out


def _ends_with(tokens: list[int], part: tuple[int, ...]) -> bool:
    return not part or (len(tokens) >= len(part) and tuple(tokens[len(tokens) - len(part) :]) == part)


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Each row's first column whose cumulative sum exceeds u times the row's sum: column j with
    probability probs[j] / sum for u uniform in [0, 1). ``probs`` [r, c] >= 0 with a positive entry
    in each row, not necessarily normalised; ``u`` [r]. Never a zero column: the cumulative sum does
    not rise there, and the target stays strictly below the row's sum whatever the rounding."""
    cdf = probs.cumsum(dim=-1)  # [r, c], non-decreasing
    total = cdf[:, -1]
    target = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    # A row of NaN (logits that overflowed) would search past the end: its last column instead
    return torch.searchsorted(cdf, target[:, None], right=True)[:, 0].clamp_(max=probs.shape[1] - 1)
