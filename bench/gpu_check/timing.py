"""Section 5: engine step times (prefill, decode at each context x batch), eager and compiled,
against the roofline."""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from bench.gpu_check.common import (
    BLOCK,
    FULL_LAYERS,
    TEXT_VOCAB,
    Preset,
    Report,
    seconds_per_call,
    si,
    synchronize,
)
from bench.gpu_check.model import Sizes
from bench.gpu_check.roofline import Roofline
from shared.engine import Engine, EngineConfig, Request, SamplingParams, SequenceState
from shared.models.layers.attention import SequenceKV
from shared.models.layers.moe import SparseMoeBlock
from shared.models.qwen3_vl_moe import Qwen3VLMoeForConditionalGeneration

_ids = itertools.count()
Fixed = dict[tuple[int, int], float]  # a step's fixed part (no decoder layers) per (context, batch)


@contextmanager
def without_layers(model: Qwen3VLMoeForConditionalGeneration) -> Iterator[None]:
    """The model with no decoder layers: a step's fixed part (scheduling, embedding, lm_head, sampling)."""
    lm = model.model
    assert lm is not None
    layers = lm.layers
    lm.layers = nn.ModuleList()
    try:
        yield
    finally:
        lm.layers = layers


def fill(engine: Engine, ctx: int, batch: int, mode: str, vocab: int, max_tokens: int) -> list[str]:
    """``batch`` sequences of ``ctx`` tokens, all decoding: prefilled from random prompts, or random
    KV imported (``import_sequence``) and written into the pool by the first step."""
    g = torch.Generator().manual_seed(ctx)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    ids = [f"ctx{ctx}-{next(_ids)}" for _ in range(batch)]
    vocab = min(vocab, TEXT_VOCAB)
    if mode == "prefill":
        for rid in ids:
            engine.add_request(Request(rid, torch.randint(0, vocab, (ctx,), generator=g).tolist(), params))
        while any(engine.seqs[rid].num_output_tokens == 0 for rid in ids):
            engine.step()
        return ids
    text = engine.model_config.text
    kv = SequenceKV(text.num_hidden_layers)
    shape = (ctx, text.num_key_value_heads, text.head_dim)
    for layer in range(text.num_hidden_layers):  # shared by every sequence: the pool gets copies
        kv.keys[layer], kv.values[layer] = (
            torch.randn(shape, generator=g).to(engine.device, engine.pool.dtype) for _ in range(2)
        )
    for rid in ids:
        tokens = torch.randint(0, vocab, (ctx + 1,), generator=g).tolist()
        engine.import_sequence(SequenceState(rid, tokens, ctx, 0, params), kv)
    engine.step()
    return ids


def time_steps(engine: Engine, warmup: int, timed: int) -> tuple[float, float]:
    """(seconds of the first warm-up step, mean seconds per timed step); ``warmup`` >= 1."""
    synchronize(engine.device)
    start = time.perf_counter()
    engine.step()
    synchronize(engine.device)
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        engine.step()
    synchronize(engine.device)
    start = time.perf_counter()
    for _ in range(timed):
        engine.step()
    synchronize(engine.device)
    return first, (time.perf_counter() - start) / timed


@dataclass
class Bench:
    """What the step timings share: the model, its sizes, the roofline and the run's settings."""

    model: Qwen3VLMoeForConditionalGeneration
    sizes: Sizes
    roof: Roofline
    p: Preset
    layers: int
    fill: str
    fill_budget: float
    deadline: float  # time.perf_counter() after which no further row starts

    def late(self) -> bool:
        return time.perf_counter() > self.deadline

    @property
    def elem(self) -> int:
        return next(self.model.parameters()).element_size()

    @property
    def decode_tokens(self) -> int:
        """Most tokens a filled sequence decodes: while the others prefill (fewer than two steps
        each), then in every timed row with and without layers."""
        p = self.p
        return 2 * max(p.batches) + 2 * (p.warmup_steps + p.timed_steps) * len(p.batches) + 16

    def config(self, compile_decode: bool) -> EngineConfig:
        longest, widest = max(self.p.contexts), max(self.p.batches)
        config = EngineConfig(
            block_size=BLOCK,
            num_blocks=widest * -(-(longest + self.decode_tokens) // BLOCK) + 16,
            max_num_seqs=64,
            max_num_batched_tokens=max(longest, 64),
            prefill_chunk_size=longest,  # a prompt of the longest context in one step
            enable_prefix_cache=False,
        )
        return dataclasses.replace(config, compile_decode=True) if compile_decode else config

    def project(self, step: float, fixed: float) -> tuple[float, float]:
        """(per layer, whole step at 48 layers) in seconds."""
        per_layer = max(step - fixed, 0.0) / self.layers
        return per_layer, fixed + FULL_LAYERS * per_layer

    def prefill(self, rep: Report, engine: Engine) -> float:
        """Times one prompt of the longest context; returns seconds per prompt token (for ``fill``)."""
        tokens = max(self.p.contexts)
        prompt = torch.randint(0, min(self.p.vocab, TEXT_VOCAB), (tokens,)).tolist()

        def once() -> None:
            params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
            engine.generate([Request(f"prefill-{next(_ids)}", prompt, params)])

        t = seconds_per_call(once, engine.device, self.p.timed_steps)
        with without_layers(self.model):
            fixed = seconds_per_call(once, engine.device, self.p.timed_steps)
        per_layer, full = self.project(t, fixed)
        s, heads, d = self.sizes, self.p.heads, self.p.head_dim
        flops, flops48 = (s.prefill_flops(n, tokens, heads, d) for n in (self.layers, FULL_LAYERS))
        floor, floor48 = flops / self.roof.flops, flops48 / self.roof.flops
        rep.table(
            ["prefill tokens", "ms", "tok/s", "FLOP", "floor ms", "% of roofline", "ms/layer",
             f"{FULL_LAYERS} layers ms", f"{FULL_LAYERS} layers floor ms", f"{FULL_LAYERS} layers % of roofline"],
            [[f"{tokens}", f"{t * 1e3:,.1f}", f"{tokens / t:,.0f}", si(flops),
              f"{floor * 1e3:,.2f}", f"{100 * floor / t:.0f}%", f"{per_layer * 1e3:,.2f}",
              f"{full * 1e3:,.1f}", f"{floor48 * 1e3:,.1f}", f"{100 * floor48 / full:.0f}%"]],
        )  # fmt: skip
        return t / tokens

    def decode(self, rep: Report, engine: Engine, per_token: float, fixed: Fixed | None) -> Fixed:
        """Decode rows at every context x batch; ``fixed``: the eager fixed parts to use (None:
        measure them here, with the layers removed). Returns the fixed parts."""
        measure_fixed = fixed is None
        fixed = {} if fixed is None else fixed  # (context, batch) -> seconds
        widest = max(self.p.batches)
        rows = []
        for ctx in self.p.contexts:
            if self.late():
                rows += [[f"{ctx}", f"{b}", "skipped: past --time-limit"] for b in self.p.batches]
                continue
            estimate = widest * ctx * per_token
            mode = (
                self.fill
                if self.fill != "auto"
                else ("prefill" if estimate <= self.fill_budget else "import")
            )
            start = time.perf_counter()
            ids = fill(engine, ctx, widest, mode, self.p.vocab, self.decode_tokens)
            rep.line(
                f"- context {ctx}: {widest} sequences filled by {mode} in {time.perf_counter() - start:.1f} s "
                f"(prefill estimate {estimate:.1f} s, budget {self.fill_budget:.0f} s)"
            )
            for batch in sorted(self.p.batches, reverse=True):
                for rid in ids[batch:]:
                    engine.abort(rid)
                ids = ids[:batch]
                if self.late():
                    rows.append([f"{ctx}", f"{batch}", "skipped: past --time-limit"])
                    continue
                first, t = time_steps(engine, self.p.warmup_steps, self.p.timed_steps)
                if measure_fixed:
                    with without_layers(self.model):
                        fixed[ctx, batch] = time_steps(engine, self.p.warmup_steps, self.p.timed_steps)[1]
                missing = [rid for rid in ids if rid not in engine.seqs]
                assert not missing, f"{missing} finished early: raise Bench.decode_tokens"
                kv_tokens = sum(engine.seqs[rid].num_tokens for rid in ids)
                s, e = self.sizes, self.elem
                floor = s.decode_bytes(self.layers, batch, kv_tokens, e) / self.roof.bandwidth
                floor48 = s.decode_bytes(FULL_LAYERS, batch, kv_tokens, e) / self.roof.bandwidth
                per_layer, full = self.project(t, fixed.get((ctx, batch), 0.0))
                rows.append(
                    [f"{ctx}", f"{batch}", f"{first * 1e3:,.1f}", f"{t * 1e3:,.2f}", f"{batch / t:,.0f}",
                     f"{s.experts_hit(batch):.1f}", f"{floor * 1e3:,.3f}", f"{100 * floor / t:.0f}%",
                     f"{per_layer * 1e3:,.3f}", f"{full * 1e3:,.1f}", f"{floor48 * 1e3:,.2f}",
                     f"{100 * floor48 / full:.0f}%"]
                )  # fmt: skip
            for rid in ids:
                engine.abort(rid)
        rep.line()
        rep.table(
            ["context", "batch", "first step ms", "ms/step", "tok/s", "experts hit/layer", "floor ms",
             "% of roofline", "ms/layer", f"{FULL_LAYERS} layers ms", f"{FULL_LAYERS} layers floor ms",
             f"{FULL_LAYERS} layers % of roofline"],
            rows,
        )  # fmt: skip
        return fixed


def moe_kernel_name(model: nn.Module) -> str:
    block = next(m for m in model.modules() if isinstance(m, SparseMoeBlock))
    return str(getattr(block.kernel, "name", block.kernel))


def time_engine(rep: Report, bench: Bench, compile_ok: bool) -> None:
    p, device = bench.p, next(bench.model.parameters()).device
    rep.line(
        f"Contexts {list(p.contexts)}, batches {list(p.batches)}, {p.warmup_steps} warm-up + "
        f"{p.timed_steps} timed steps each, greedy; block {BLOCK}, max_num_seqs 64, prefix cache off\n"
    )
    engine = Engine(bench.model, bench.config(compile_decode=False))
    rep.line(f"### Eager (MoE kernel {moe_kernel_name(bench.model)})\n")
    per_token = bench.prefill(rep, engine)
    rep.line()
    fixed = bench.decode(rep, engine, per_token, None)
    del engine
    if device.type == "cuda":
        torch.cuda.empty_cache()
    rep.line("\n### Compiled decode (`compile_decode=True`)\n")
    if "compile_decode" not in {f.name for f in dataclasses.fields(EngineConfig)}:
        rep.line("- not available: EngineConfig has no compile_decode field")
        return
    if not compile_ok or bench.late():
        rep.line("- skipped (--no-compile)" if not compile_ok else "- skipped: past --time-limit")
        return
    start = time.perf_counter()
    engine = Engine(bench.model, bench.config(compile_decode=True))
    rep.line(
        f"- engine start with graph warm-up: {time.perf_counter() - start:.1f} s "
        "(first step ms below includes compiling a new batch bucket or table width)"
    )
    graph = engine.runner.graph
    if graph is not None and not getattr(graph, "ready", True):  # compiling failed: steps would be eager
        rep.check(False, f"decode graph compiled: {graph.error}")
        return
    bench.decode(rep, engine, per_token, fixed)
    rep.line()
    graph = engine.runner.graph
    steps = 0 if graph is None else graph.steps
    rep.check(steps > 0, f"{steps} decode steps ran through the compiled graph")
