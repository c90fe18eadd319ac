"""The C kernels of ``cpu_kernels`` against float64 references: decode attention over a paged pool
(GQA groups, block sizes, lengths on and across block boundaries, float32 and bfloat16) and the
routed experts (against the reference loop); what they refuse; how they are built and cached, and
what the engine does where they cannot be built."""

from __future__ import annotations

import logging

import pytest
import torch

from shared.engine import Engine, EngineConfig, Request, SamplingParams, cpu_kernels
from shared.engine.moe_kernels import cpu_experts
from shared.models.layers.moe import grouped_experts
from tests.numerics import assert_close_scaled

pytestmark = pytest.mark.unit

# bfloat16 inputs, float32 sums, one bfloat16 rounding of the output: a few bf16 ulps of the values.
REL = {torch.float32: 2e-6, torch.bfloat16: 1e-2}


def paged_reference(q, k_slots, v_slots, tables, lengths, block_size, scale):
    """Each row's keys and values collected slot by slot, softmax attention in float64."""
    out = torch.empty(q.shape, dtype=torch.float64)
    group = q.shape[1] // k_slots.shape[1]
    for b, (table, length) in enumerate(zip(tables.tolist(), lengths.tolist(), strict=True)):
        slots = [table[i // block_size] * block_size + i % block_size for i in range(length)]
        k = k_slots[slots].double().repeat_interleave(group, dim=1)  # [L, Hq, D]
        v = v_slots[slots].double().repeat_interleave(group, dim=1)
        weights = torch.softmax(torch.einsum("hd,lhd->hl", q[b].double() * scale, k), dim=-1)
        out[b] = torch.einsum("hl,lhd->hd", weights, v)
    return out


def paged_case(dtype, group, block_size, lengths, seed=0, hkv=2, d=16):
    g = torch.Generator().manual_seed(seed)
    width = max(-(-n // block_size) for n in lengths)
    num_blocks = len(lengths) * width + 3
    k_slots = torch.randn(num_blocks * block_size, hkv, d, generator=g).to(dtype)
    v_slots = torch.randn(num_blocks * block_size, hkv, d, generator=g).to(dtype)
    tables = torch.randperm(num_blocks, generator=g)[: len(lengths) * width].view(len(lengths), width)
    q = torch.randn(len(lengths), hkv * group, d, generator=g).to(dtype)
    return q, k_slots, v_slots, tables.int(), torch.tensor(lengths, dtype=torch.int32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("block_size", [4, 16])
def test_paged_decode_attention_equals_the_reference(dtype, group, block_size):
    # lengths: one token, a block's last slot, a new block's first, mid-block, many blocks
    lengths = [1, block_size, block_size + 1, 2 * block_size - 3, 5 * block_size + 2]
    case = paged_case(dtype, group, block_size, lengths, seed=group * block_size)
    out = cpu_kernels.paged_decode_attention(*case, block_size, 0.25)
    assert out.dtype == dtype and out.shape == case[0].shape
    want = paged_reference(*case, block_size, 0.25)
    assert_close_scaled(out.double(), want, rel=REL[dtype], name=f"paged decode {dtype} G={group}")


def test_paged_decode_attention_at_the_real_head_layout():
    """Qwen3-VL-30B-A3B's heads (4 KV heads of 128, 8 query heads each): the kernel walks a row's
    blocks once with every KV head's state side by side; no head may see another's."""
    case = paged_case(torch.float32, 8, 16, [1, 17, 40, 95], seed=3, hkv=4, d=128)
    out = cpu_kernels.paged_decode_attention(*case, 16, 128**-0.5)
    want = paged_reference(*case, 16, 128**-0.5)
    assert_close_scaled(out.double(), want, rel=REL[torch.float32], name="paged decode 4 x 8 heads of 128")


def test_paged_decode_attention_is_not_moved_by_large_scores():
    """Scores far apart (a spike of 80 in the logits): the online softmax keeps its maximum."""
    q, k, v, tables, lengths = paged_case(torch.float32, 2, 4, [9, 13])
    k[tables[1, 2] * 4 + 1] *= 40.0  # one key of row 1, third block
    out = cpu_kernels.paged_decode_attention(q, k, v, tables, lengths, 4, 1.0)
    assert_close_scaled(out.double(), paged_reference(q, k, v, tables, lengths, 4, 1.0), rel=1e-5)


def test_paged_decode_attention_refuses_rows_outside_the_pool():
    q, k, v, tables, lengths = paged_case(torch.float32, 2, 4, [5, 6])
    for bad_tables, bad_lengths in (
        (tables, torch.tensor([5, 0], dtype=torch.int32)),  # no token
        (tables, torch.tensor([5, 4 * tables.shape[1] + 1], dtype=torch.int32)),  # past its table
        (tables.clone().fill_(k.shape[0] // 4), lengths),  # a block past the pool
    ):
        with pytest.raises(RuntimeError, match="1 row|2 row"):
            cpu_kernels.paged_decode_attention(q, k, v, bad_tables, bad_lengths, 4, 0.5)
    with pytest.raises(ValueError, match="int32 tables"):
        cpu_kernels.paged_decode_attention(q, k, v, tables.long(), lengths, 4, 0.5)
    with pytest.raises(ValueError, match="float32/bfloat16"):
        cpu_kernels.paged_decode_attention(q.half(), k.half(), v.half(), tables, lengths, 4, 0.5)


def experts_case(dtype, tokens, seed=0):
    g = torch.Generator().manual_seed(seed)
    e, h, i, k = 8, 24, 20, 3
    x = torch.randn(tokens, h, generator=g).to(dtype)
    gate_up = (torch.randn(e, h, 2 * i, generator=g) / h**0.5).to(dtype)
    down = (torch.randn(e, i, h, generator=g) / i**0.5).to(dtype)
    ids = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(tokens)])
    weights = torch.softmax(torch.randn(tokens, k, generator=g), -1).to(dtype)
    return x, gate_up, down, ids, weights


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens", [1, 5, 19, 32])  # 19 * 3 pairs over 8 experts: > 8 rows per expert
def test_routed_experts_equal_the_reference_loop(dtype, tokens):
    case = experts_case(dtype, tokens, seed=tokens)
    out = cpu_kernels.routed_experts(*case)
    assert out.dtype == dtype
    want = grouped_experts(*(t.double() if t.is_floating_point() else t for t in case))
    assert_close_scaled(out.double(), want, rel=REL[dtype], name=f"routed experts {dtype} T={tokens}")


def test_routed_experts_of_no_tokens():
    x, gate_up, down, ids, weights = experts_case(torch.float32, 3)
    out = cpu_kernels.routed_experts(x[:0], gate_up, down, ids[:0], weights[:0])
    assert out.shape == (0, x.shape[1])


def test_cpu_experts_hand_larger_steps_to_the_grouped_gemm():
    case = experts_case(torch.float32, cpu_kernels.MAX_EXPERT_TOKENS + 7, seed=1)
    assert_close_scaled(cpu_experts(*case), grouped_experts(*case), name="many tokens")


def test_routed_experts_refuse_an_expert_outside_the_layer():
    x, gate_up, down, ids, weights = experts_case(torch.float32, 4)
    ids[2, 1] = gate_up.shape[0]
    with pytest.raises(ValueError, match="expert id outside"):
        cpu_kernels.routed_experts(x, gate_up, down, ids, weights)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cols", [1, 5, 16, 17, 1088])  # under, at and past one 16-lane block
def test_row_argmax_is_torch_argmax(dtype, cols):
    """First index of the largest value (ties: the first), or of the first NaN; infinities."""
    x = torch.randn(12, cols, generator=torch.Generator().manual_seed(cols)).to(dtype)
    x[1, :] = float("-inf")
    x[2, :] = float("nan")
    x[3, cols // 2] = float("nan")
    x[4, cols - 1] = float("inf")
    x[5, -2:] = 1e4  # a tie at the end
    x[6, :] = 0.0  # all tied
    x[7, cols // 3] = float("nan")
    x[7, cols - 1] = float("nan")  # two NaNs: the first
    x[8, 0] = float("inf")
    assert torch.equal(cpu_kernels.row_argmax(x), x.argmax(dim=-1))


def test_row_argmax_refuses_what_it_does_not_take():
    for bad in (torch.zeros(3, 0), torch.zeros(4), torch.zeros(2, 3, dtype=torch.float64)):
        with pytest.raises(ValueError, match="row_argmax"):
            cpu_kernels.row_argmax(bad)


def test_a_kernel_is_built_once_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("EPD_KERNEL_CACHE", str(tmp_path))
    cpu_kernels._load.cache_clear()
    try:
        assert cpu_kernels.decode_kernel(16, 2, 8) is None
        built = list(tmp_path.glob("paged_decode-*.so"))
        assert len(built) == 1 and not list(tmp_path.glob(".build-*"))
        stamp = built[0].stat().st_mtime_ns
        cpu_kernels._load.cache_clear()  # another process: finds the library, builds nothing
        assert cpu_kernels.decode_kernel(16, 2, 8) is None
        assert built[0].stat().st_mtime_ns == stamp and len(list(tmp_path.iterdir())) == 1
    finally:
        cpu_kernels._load.cache_clear()


def test_without_a_c_compiler_the_engine_keeps_the_library_kernels(lm, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("EPD_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "/nonexistent/cc")
    cpu_kernels._load.cache_clear()
    try:
        assert cpu_kernels.decode_kernel(16, 2, 16) == "no C compiler (cc, gcc or clang on PATH, or CC)"
        with caplog.at_level(logging.WARNING):
            engine = Engine(lm, EngineConfig(num_blocks=32, max_num_seqs=4))
        assert "paged attention: gather instead of the cpu kernel, no C compiler" in caplog.text
        assert "MoE kernel: the grouped GEMM instead of cpu, no C compiler" in caplog.text
        req = Request("a", [5, 6, 7, 8], SamplingParams(temperature=0, max_tokens=4))
        assert len(engine.generate([req])["a"]) == 4
        with pytest.raises(ValueError, match="--attention-backend cpu: no C compiler"):
            Engine(lm, EngineConfig(num_blocks=32, attention_backend="cpu"))
        with pytest.raises(ValueError, match="--moe-kernel cpu: no C compiler"):
            Engine(lm, EngineConfig(num_blocks=32, moe_kernel="cpu"))
    finally:
        cpu_kernels._load.cache_clear()


def test_a_compiler_that_fails_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("EPD_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # exits 1 for every build
    cpu_kernels._load.cache_clear()
    try:
        reason = cpu_kernels.experts_kernel(24, 20)
        assert reason is not None and reason.startswith("false could not build routed_experts.c")
        assert not list(tmp_path.iterdir())  # no half-built library left behind
    finally:
        cpu_kernels._load.cache_clear()


def test_auto_keeps_the_library_kernels_above_two_threads(lm, caplog):
    """The C kernels are single-threaded: with more torch threads, auto keeps gather and the grouped
    GEMM (their thread pool); an explicit cpu still takes the C kernels."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cpu_kernels.AUTO_MAX_THREADS + 1)
    try:
        with caplog.at_level(logging.INFO):
            engine = Engine(lm, EngineConfig(num_blocks=32, max_num_seqs=4))
        explicit = Engine(
            lm, EngineConfig(num_blocks=32, max_num_seqs=4, attention_backend="cpu", moe_kernel="cpu")
        )
    finally:
        torch.set_num_threads(threads)
    assert f"torch runs {cpu_kernels.AUTO_MAX_THREADS + 1} threads and the C kernels one" in caplog.text
    assert not engine.runner.cpu_decode and explicit.runner.cpu_decode
    req = lambda: [Request("a", [5, 6, 7, 8], SamplingParams(temperature=0, max_tokens=6))]  # noqa: E731
    assert engine.generate(req()) == explicit.generate(req())


def test_auto_keeps_the_grouped_gemm_for_large_experts(caplog):
    from shared.engine.moe_kernels import ExpertsOp, select_kernel

    cpu = torch.device("cpu")
    with caplog.at_level(logging.INFO):
        large = select_kernel("auto", cpu, torch.float32, (2048, 768))  # Qwen3-VL-30B-A3B: 18 MiB each
        small = select_kernel("auto", cpu, torch.float32, (512, 192))
    assert isinstance(large, ExpertsOp) and large.name == "grouped_mm"
    assert isinstance(small, ExpertsOp) and small.name == "cpu"
    assert (
        "MoE kernel: the grouped GEMM, not cpu: experts of 18.0 MiB stream faster through it" in caplog.text
    )
