"""One command on one GPU: rooflines, paged attention, KV handoff and engine step times at real widths.

    python bench/gpu_check.py                           # H100/H200: bf16, 4 layers, aims at < 5 min
    python bench/gpu_check.py --device cpu --preset tiny  # tiny widths: every code path, ~1-2 min
                                                        # on 2 cores, mostly compiling
    flags: --layers N, --no-compile (skip FlexPagedAttention and the compiled decode step),
    --fill auto|prefill|import, --time-limit S (no timing row starts after S seconds; 270)

Needs torch (and triton, for ``torch.compile`` on a GPU) and this checkout; nothing else is
imported. The report is Markdown on stdout; the exit status is 1 if any check FAILED.

1. Roofline probes, measured here: device-to-device copy bandwidth (read + write bytes / time)
   and the FLOP/s of one large GEMM in the run's dtype.
2. The language model of Qwen3-VL-30B-A3B (hidden 2048, 32/4 heads of 128, 128 experts top-8 of
   FFN 768, vocab 151936, MRoPE [24, 20, 20] at theta 5e6) built from ``shared.models`` with random
   weights (normal, std 0.02; norms 1) and ``--layers`` decoder layers; parameters per layer and
   projected to the published 48.
3. ``PagedAttention`` (and ``FlexPagedAttention`` where that module exists) against
   ``ContiguousAttention`` on one packed batch of prefill chunks and decodes at block boundaries,
   in bf16 and fp32: max |error| over a tolerance of 2e-2 (bf16) or 1e-5 (fp32) x max |reference|.
4. A seeded (temperature 1, seed 7) and a greedy request handed from a CPU engine to one on
   ``--device`` (a small fp32 model, the same weights on both): ``export_state`` + ``export_kv``
   after a few tokens, ``import_sequence``, generate the rest. Checked: it continues to
   ``max_tokens``; two imports of the same state give the same tokens; greedy tokens equal the
   CPU-only run; seeded tokens equal it only when both engines are of one device kind (the
   sampler's guarantee, ``shared/engine/sampler.py``), so across kinds that is reported, not checked.
5. Engine step times at the widths of 2, eager and (where ``EngineConfig`` has ``compile_decode``)
   compiled: prefill of the longest context, then decode steps at each context x batch (2k / 8k x
   1 / 16 / 64). Contexts are filled by prefilling random prompts, or, when the measured prefill
   rate says that would take longer than ``--fill-budget`` seconds, by importing random KV through
   ``import_sequence`` (the report says which). Roofline: a decode step reads the weights it uses
   (attention, router, norms, lm_head, the E(1 - (1 - K/E)^b) experts a batch of b hits per layer)
   and every context's KV, floor = bytes / copy bandwidth; prefill does 2 x active params x tokens
   + 4 x layers x Hq x D x L^2 / 2 attention FLOPs, floor = FLOPs / GEMM FLOP/s. Per layer = (step -
   the same step with the decoder layers removed) / layers, measured with the eager engine (the
   compiled rows use that eager fixed part too), and 48 layers = fixed part + 48 x per layer.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import platform
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.engine import Engine, EngineConfig, Request, SamplingParams, SequenceState  # noqa: E402
from shared.engine.kv_pool import KVPool  # noqa: E402
from shared.engine.paged_attention import PagedAttention  # noqa: E402
from shared.models.config import ModelConfig, parse_config  # noqa: E402
from shared.models.layers.attention import AttentionBackend, ContiguousAttention, SequenceKV  # noqa: E402
from shared.models.layers.moe import SparseMoeBlock  # noqa: E402
from shared.models.qwen3_vl_moe import Qwen3VLMoeForConditionalGeneration  # noqa: E402

FULL_LAYERS = 48  # Qwen3-VL-30B-A3B
BLOCK = 16
TEXT_VOCAB = 151643  # ids below every special token: random prompts never hold an image token
REL_TOL = {torch.bfloat16: 2e-2, torch.float32: 1e-5}
# (cached, new) tokens per sequence: chunks from nothing, after a partial block and on a long cache;
# decodes that fill a block's last slot (47), open a new block (48) or sit mid-block.
ATTENTION_BATCH = [(0, 70), (37, 27), (200, 64), (47, 1), (48, 1), (63, 1), (500, 1)]


@dataclass(frozen=True)
class Preset:
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    experts: int
    top_k: int
    expert_ffn: int
    vocab: int
    layers: int
    mrope: tuple[int, int, int]
    contexts: tuple[int, ...]
    batches: tuple[int, ...]
    copy_bytes: int
    gemm_n: int
    warmup_steps: int
    timed_steps: int


PRESETS = {
    "full": Preset(
        hidden=2048, heads=32, kv_heads=4, head_dim=128, experts=128, top_k=8, expert_ffn=768,
        vocab=151936, layers=4, mrope=(24, 20, 20), contexts=(2048, 8192), batches=(1, 16, 64),
        copy_bytes=2 << 30, gemm_n=8192, warmup_steps=3, timed_steps=10,
    ),
    "tiny": Preset(
        hidden=64, heads=4, kv_heads=2, head_dim=16, experts=8, top_k=2, expert_ffn=48,
        vocab=1024, layers=2, mrope=(4, 2, 2), contexts=(64, 128), batches=(1, 4),
        copy_bytes=64 << 20, gemm_n=256, warmup_steps=1, timed_steps=3,
    ),
}  # fmt: skip


class Report:
    """Markdown on stdout as it is measured; counts the FAILED checks."""

    def __init__(self) -> None:
        self.failures = 0

    def section(self, title: str) -> None:
        print(f"\n## {title}\n", flush=True)

    def line(self, text: str = "") -> None:
        print(text, flush=True)

    def check(self, ok: bool, text: str) -> None:
        self.failures += not ok
        self.line(f"- {'ok' if ok else 'FAILED'}: {text}")

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.line("| " + " | ".join(header) + " |")
        self.line("|" + "---|" * len(header))
        for row in rows:
            self.line("| " + " | ".join(row) + " |")


def si(x: float, unit: str = "") -> str:
    """3 significant digits with a decimal prefix: ``si(2.5e12, "FLOP/s")`` is ``2.5 TFLOP/s``."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm up
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


# ----- 1. roofline probes --------------------------------------------------------------------------
@dataclass(frozen=True)
class Roofline:
    bandwidth: float  # bytes/s, read + write of a device-to-device copy
    flops: float  # FLOP/s of one large GEMM


def copy_seconds(num_bytes: int, device: torch.device) -> float:
    src = torch.empty(num_bytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    return seconds_per_call(lambda: dst.copy_(src), device, 20)


def measure_roofline(rep: Report, device: torch.device, p: Preset, dtype: torch.dtype) -> Roofline:
    bandwidth = 2 * p.copy_bytes / copy_seconds(p.copy_bytes, device)
    n = p.gemm_n
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    out = torch.empty(n, n, device=device, dtype=dtype)
    t = seconds_per_call(lambda: torch.mm(a, b, out=out), device, 20)
    flops = 2 * n**3 / t
    rep.line(f"- copy {p.copy_bytes >> 20} MiB device to device: {si(bandwidth, 'B/s')} (read + write)")
    rep.line(f"- GEMM {n}^3 {str(dtype).removeprefix('torch.')}: {si(flops, 'FLOP/s')}")
    return Roofline(bandwidth, flops)


# ----- 2. the model --------------------------------------------------------------------------------
def model_config(p: Preset, layers: int) -> ModelConfig:
    """A config.json as the published Qwen3-VL-30B-A3B one, at the preset's widths."""
    return parse_config(
        {
            "model_type": "qwen3_vl_moe",
            "dtype": "bfloat16",
            "tie_word_embeddings": False,
            "text_config": {
                "vocab_size": p.vocab, "hidden_size": p.hidden, "num_hidden_layers": layers,
                "num_attention_heads": p.heads, "num_key_value_heads": p.kv_heads, "head_dim": p.head_dim,
                "intermediate_size": 6144, "num_experts": p.experts, "num_experts_per_tok": p.top_k,
                "moe_intermediate_size": p.expert_ffn, "rms_norm_eps": 1e-6, "rope_theta": 5_000_000.0,
                "rope_scaling": {"rope_type": "default", "mrope_section": list(p.mrope), "mrope_interleaved": True},
                "max_position_embeddings": 262144, "eos_token_id": 151645,
            },
            "vision_config": {  # the published tower's sizes; never built (language part only)
                "depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16,
                "out_hidden_size": p.hidden, "num_position_embeddings": 2304,
                "deepstack_visual_indexes": [8, 16, 24],
            },
        }
    )  # fmt: skip


def random_language_model(
    config: ModelConfig, dtype: torch.dtype, device: torch.device, seed: int
) -> Qwen3VLMoeForConditionalGeneration:
    """The language half with random weights: built on meta, allocated once in ``dtype`` on ``device``."""
    with torch.device("meta"):
        model = Qwen3VLMoeForConditionalGeneration(config, parts={"language"})
    model = model.to(dtype).to_empty(device=device)
    g = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=g)
    return model.eval()


@dataclass(frozen=True)
class Sizes:
    """Parameter counts of one decoder layer and of the parts outside the layers."""

    layer_dense: int  # attention, router, norms
    layer_matmul: int  # of those, the weights a token multiplies (attention and router)
    expert: int  # one expert's gate, up and down
    experts: int
    top_k: int
    embed: int
    head: int  # lm_head and the final norm
    hidden: int
    vocab: int
    kv_per_token_layer: int  # K and V elements of one token in one layer

    @classmethod
    def of(cls, model: Qwen3VLMoeForConditionalGeneration) -> Sizes:
        lm, text = model.model, model.config.text
        assert lm is not None and model.lm_head is not None
        params = dict(lm.layers[0].named_parameters())
        dense = {n: p.numel() for n, p in params.items() if ".experts." not in n}
        experts = sum(p.numel() for n, p in params.items() if ".experts." in n)
        return cls(
            layer_dense=sum(dense.values()),
            layer_matmul=sum(n for name, n in dense.items() if params[name].dim() == 2),
            expert=experts // text.num_experts,
            experts=text.num_experts,
            top_k=text.num_experts_per_tok,
            embed=lm.embed_tokens.weight.numel(),
            head=model.lm_head.weight.numel() + lm.norm.weight.numel(),
            hidden=text.hidden_size,
            vocab=text.vocab_size,
            kv_per_token_layer=2 * text.num_key_value_heads * text.head_dim,
        )

    @property
    def layer(self) -> int:
        return self.layer_dense + self.experts * self.expert

    @property
    def layer_active(self) -> int:
        return self.layer_dense + self.top_k * self.expert

    def total(self, layers: int) -> int:
        return self.embed + self.head + layers * self.layer

    def experts_hit(self, batch: int) -> float:
        """Expected distinct experts a batch of independent tokens routes to, per layer."""
        return self.experts * (1 - (1 - self.top_k / self.experts) ** batch)

    def decode_bytes(self, layers: int, batch: int, kv_tokens: int, elem: int) -> float:
        """Bytes a decode step reads: weights it uses and the KV of ``kv_tokens`` (all contexts)."""
        per_layer = self.layer_dense + self.experts_hit(batch) * self.expert
        weights = self.head + batch * self.hidden + layers * per_layer
        return elem * (weights + layers * kv_tokens * self.kv_per_token_layer)

    def prefill_flops(self, layers: int, tokens: int, heads: int, head_dim: int) -> float:
        """One prompt of ``tokens``: GEMMs of the active weights, causal attention, lm_head on one row."""
        matmul = layers * (self.layer_matmul + self.top_k * self.expert)
        attention = 4 * layers * heads * head_dim * tokens**2 / 2
        return 2 * matmul * tokens + attention + 2 * self.vocab * self.hidden


def describe_model(rep: Report, sizes: Sizes, layers: int, dtype: torch.dtype) -> None:
    elem = torch.empty((), dtype=dtype).element_size()

    def row(name: str, n: float) -> list[str]:
        return [name, si(n), si(n * elem, "B")]

    rep.table(
        ["parameters", "count", str(dtype).removeprefix("torch.")],
        [
            row("one layer: attention, router, norms", sizes.layer_dense),
            row(f"one layer: {sizes.experts} experts", sizes.experts * sizes.expert),
            row(f"one layer: active per token (top-{sizes.top_k})", sizes.layer_active),
            row("embedding", sizes.embed),
            row("lm_head + final norm", sizes.head),
            row(f"built: {layers} layers", sizes.total(layers)),
            row(f"projected: {FULL_LAYERS} layers", sizes.total(FULL_LAYERS)),
            row(f"projected: {FULL_LAYERS} layers, active per token", sizes.head + FULL_LAYERS * sizes.layer_active),
        ],
    )  # fmt: skip


# ----- 3. paged attention ---------------------------------------------------------------------------
def attention_error(
    backend: Callable[..., AttentionBackend], device: torch.device, dtype: torch.dtype, p: Preset
) -> tuple[float, float]:
    """Worst (max |error|, tolerance) over 2 layers of one packed batch, against the reference."""
    g = torch.Generator().manual_seed(0)  # host draws: the same numbers on every device

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    layers, hq, hkv, d = 2, p.heads, p.kv_heads, p.head_dim
    need = [-(-(c + n) // BLOCK) for c, n in ATTENTION_BATCH]
    pool = KVPool(layers, sum(need) + 8, BLOCK, hkv, d, dtype, device)
    free = torch.randperm(pool.num_blocks, generator=g).tolist()  # scattered blocks
    tables = [[free.pop() for _ in range(nb)] for nb in need]
    refs = [SequenceKV(layers) for _ in ATTENTION_BATCH]
    for layer in range(layers):
        for (cached, _), table, ref in zip(ATTENTION_BATCH, tables, refs, strict=True):
            k, v = randn(cached, hkv, d), randn(cached, hkv, d)
            ref.append(layer, k, v)
            if cached:
                pool.write_layer(table, layer, k, v)
    slots = [s for (c, n), t in zip(ATTENTION_BATCH, tables, strict=True) for s in pool.slot_ids(t, c, c + n)]
    lens = [n for _, n in ATTENTION_BATCH]
    seq_lens = [c + n for c, n in ATTENTION_BATCH]
    scale = d**-0.5
    paged = backend(pool, lens, seq_lens, tables, torch.tensor(slots, device=device), scale)
    reference = ContiguousAttention(refs, lens, scale)
    worst = (0.0, 1.0)
    for layer in range(layers):
        q, k, v = randn(sum(lens), hq, d), randn(sum(lens), hkv, d), randn(sum(lens), hkv, d)
        got = paged.forward(layer, q, k, v).float()
        want = reference.forward(layer, q, k, v).float()
        error = float((got - want).abs().max())
        tolerance = REL_TOL[dtype] * float(want.abs().max()) + 1e-12
        if error / tolerance > worst[0] / worst[1]:
            worst = (error, tolerance)
    return worst


def check_attention(rep: Report, device: torch.device, p: Preset, compile_ok: bool) -> None:
    backends: dict[str, Callable[..., AttentionBackend] | str] = {"PagedAttention (gather)": PagedAttention}
    try:
        from shared.engine.flex_attention import FlexPagedAttention
    except ImportError as e:
        backends["FlexPagedAttention"] = f"not available ({e})"
    else:
        backends["FlexPagedAttention"] = (
            FlexPagedAttention if compile_ok else "skipped (--no-compile: it always runs compiled)"
        )
    shape = ", ".join(f"{c}+{n}" for c, n in ATTENTION_BATCH)
    rep.line(
        f"Batch (cached+new per sequence): {shape}; block {BLOCK}; Hq/Hkv/D {p.heads}/{p.kv_heads}/{p.head_dim}\n"
    )
    for name, backend in backends.items():
        if isinstance(backend, str):
            rep.line(f"- {name}: {backend}")
            continue
        for dtype in (torch.bfloat16, torch.float32):
            label = f"{name} {str(dtype).removeprefix('torch.')}"
            try:
                with torch.inference_mode():
                    error, tol = attention_error(backend, device, dtype, p)
            except Exception:  # one backend's failure must not hide the others' results
                rep.check(False, f"{label} raised:\n\n```\n{traceback.format_exc()}```")
                continue
            rep.check(
                error <= tol, f"{label}: max error {error:.2e} / tolerance {tol:.2e} = {error / tol:.3f}"
            )


# ----- 4. handoff -------------------------------------------------------------------------------
def run_to_end(engine: Engine) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for token in engine.step():
            out.setdefault(token.request_id, []).append(token.token_id)
    return out


def handoff(
    source: Engine, targets: list[Engine], prompt: list[int], params: SamplingParams, at: int, tag: str
) -> tuple[list[int], list[list[int]]]:
    """The source's own run to the end, and source's first ``at`` tokens + each target's continuation."""
    source.add_request(Request(tag, prompt, params))
    first: list[int] = []
    while len(first) < at:
        first += [t.token_id for t in source.step() if t.request_id == tag]
    state, kv = source.export_state(tag), source.export_kv(tag)
    own = first + run_to_end(source)[tag]
    handed = []
    for i, target in enumerate(targets):
        target.import_sequence(dataclasses.replace(state, request_id=f"{tag}-{i}"), kv)
        handed.append(first + run_to_end(target)[f"{tag}-{i}"])
    return own, handed


def check_handoff(rep: Report, device: torch.device, seed: int) -> None:
    cpu = torch.device("cpu")
    p = PRESETS["tiny"]
    model = random_language_model(model_config(p, p.layers), torch.float32, cpu, seed)
    moved = copy.deepcopy(model).to(device)
    config = EngineConfig(block_size=BLOCK, num_blocks=32, max_num_seqs=4, enable_prefix_cache=False)
    source = Engine(model, config)
    targets = [Engine(moved, config) for _ in range(2)]
    prompt = torch.randint(0, p.vocab, (21,), generator=torch.Generator().manual_seed(seed)).tolist()
    max_tokens, at = 16, 5
    same_kind = device.type == "cpu"
    rep.line(
        f"CPU engine -> {device.type} engine (fp32, tiny widths), {len(prompt)}-token prompt, "
        f"handed over after {at} of {max_tokens} tokens\n"
    )
    for name, params in (
        (
            "seeded (temperature 1, seed 7)",
            SamplingParams(temperature=1.0, seed=7, max_tokens=max_tokens, ignore_eos=True),
        ),
        ("greedy", SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)),
    ):
        own, (a, b) = handoff(source, targets, prompt, params, at, name.split()[0])
        rep.check(
            len(a) == max_tokens, f"{name}: continued on {device.type}, {len(a) - at} tokens after the import"
        )
        rep.check(a == b, f"{name}: two imports of the same state give the same tokens")
        if params.greedy or same_kind:
            rep.check(a == own, f"{name}: handed-over tokens equal the CPU engine's own run")
        else:
            same = "equal" if a == own else "differ from"
            rep.line(
                f"- info: {name}: handed-over tokens {same} the CPU engine's own run "
                "(not expected across device kinds: CPU and CUDA generators draw different streams)"
            )


# ----- 5. engine step times ------------------------------------------------------------------------------
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


# ----- main ------------------------------------------------------------------------------------------
def header(rep: Report, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> None:
    try:
        triton = metadata.version("triton")
    except metadata.PackageNotFoundError:
        triton = "not installed"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    rep.line("# GPU check: Qwen3-VL-MoE engine")
    rep.line()
    rep.line(
        f"- device: {device} ({name}); torch {torch.__version__} (CUDA {torch.version.cuda}); triton {triton}"
    )
    rep.line(
        f"- preset {args.preset}, {args.layers} layers, {str(dtype).removeprefix('torch.')}, "
        f"compile {'on' if args.compile else 'off'}, fill {args.fill}, threads {torch.get_num_threads()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full", help="widths and sizes")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers built (default: preset's)")
    parser.add_argument(
        "--dtype",
        choices=("bfloat16", "float32"),
        default=None,
        help="model dtype (default: bfloat16 on cuda, float32 on cpu)",
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also the compiled decode step and FlexPagedAttention (torch.compile)",
    )
    parser.add_argument(
        "--fill",
        choices=("auto", "prefill", "import"),
        default="auto",
        help="how decode contexts are filled (auto: prefill unless over --fill-budget)",
    )
    parser.add_argument("--fill-budget", type=float, default=20.0, help="seconds one context's fill may take")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=270.0,
        help="seconds after the start past which no further timing row starts (rows are reported skipped)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    p = PRESETS[args.preset]
    args.layers = args.layers or p.layers
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    if args.threads:
        torch.set_num_threads(args.threads)
    rep = Report()
    header(rep, args, device, dtype)
    begin = time.perf_counter()

    def section(title: str, run: Callable[[], object]) -> object:
        rep.section(title)
        start = time.perf_counter()
        try:
            result = run()
        except Exception:
            rep.check(False, f"{title} raised:\n\n```\n{traceback.format_exc()}```")
            return None
        rep.line(f"\n_{time.perf_counter() - start:.1f} s_")
        return result

    roof = section("1. Roofline probes", lambda: measure_roofline(rep, device, p, dtype))

    def build() -> Bench:
        start = time.perf_counter()
        model = random_language_model(model_config(p, args.layers), dtype, device, args.seed)
        synchronize(device)
        rep.line(
            f"Language model built in {time.perf_counter() - start:.1f} s: hidden {p.hidden}, "
            f"heads {p.heads}/{p.kv_heads} x {p.head_dim}, {p.experts} experts top-{p.top_k} of FFN "
            f"{p.expert_ffn}, vocab {p.vocab}, MRoPE {list(p.mrope)} theta 5e6\n"
        )
        sizes = Sizes.of(model)
        describe_model(rep, sizes, args.layers, dtype)
        assert isinstance(roof, Roofline), "no roofline measured"
        deadline = begin + args.time_limit
        return Bench(model, sizes, roof, p, args.layers, args.fill, args.fill_budget, deadline)

    bench = section("2. Model", build)
    section(
        "3. Paged attention vs the contiguous reference",
        lambda: check_attention(rep, device, p, args.compile),
    )
    section(f"4. KV handoff: CPU -> {device.type}", lambda: check_handoff(rep, device, args.seed))
    if isinstance(bench, Bench):
        section("5. Engine step times", lambda: time_engine(rep, bench, args.compile))
    else:
        rep.section("5. Engine step times")
        rep.check(False, "no model was built")
    verdict = f"{rep.failures} check(s) FAILED" if rep.failures else "all checks passed"
    rep.line(f"\nTotal {time.perf_counter() - begin:.0f} s; {verdict}")
    return 1 if rep.failures else 0


if __name__ == "__main__":
    sys.exit(main())
