"""Sections 3 and 4: the paged backends against the contiguous reference, and a request handed
from a CPU engine to one on the device."""

from __future__ import annotations

import copy
import dataclasses
import traceback
from collections.abc import Callable

import torch

from bench.gpu_check.common import (
    ATTENTION_BATCH,
    BLOCK,
    PRESETS,
    REL_TOL,
    Preset,
    Report,
)
from bench.gpu_check.model import model_config, random_language_model
from shared.engine import Engine, EngineConfig, Request, SamplingParams
from shared.engine.kv_pool import KVPool
from shared.engine.paged_attention import PagedAttention
from shared.models.layers.attention import AttentionBackend, ContiguousAttention, SequenceKV


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
