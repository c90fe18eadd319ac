"""C kernels for the CPU engine's decode steps, built on first use with the machine's C compiler.

Owns three kernels (sources in ``native/``), the first two one opaque call each in a step:

- ``epd::paged_decode_attention`` (``paged_decode.c``): decode attention that reads each row's keys
  and values where they lie in the paged pool: no gather, no SDPA call;
- ``routed_experts`` (``routed_experts.c``): the MoE experts of a few tokens, each active expert's
  weights streamed once per 8 of its tokens, no weight packing (the engine's ``cpu`` MoE kernel,
  ``moe_kernels``; above ``MAX_EXPERT_TOKENS`` tokens it hands over to the grouped GEMM);
- ``row_argmax`` (``argmax.c``): the sampler's argmax over each row's logits, in vector lanes (torch's
  CPU argmax takes one element at a time).

At decode sizes on the CPU the library paths spend their time around the arithmetic: copying blocks
and SDPA's per-call setup for one query row; packing expert weights a GEMM then reads once, and a
dozen small ops per expert (docs/BENCHMARKS.md). vLLM's and SGLang's CPU backends answer the same
way, with hand-written loops.

Each kernel is built per model size (``-D`` constants: head dim, query heads per KV head, block
size; hidden and expert sizes), so that every inner loop has a constant trip count, with
``-O3 -march=native`` and float reassociation (sums vectorise; no finite-math assumptions). The
shared object lands in a cache directory keyed by the source, flags, compiler and CPU: built once
per machine (~1 s), loaded by every later process. ``EPD_KERNEL_CACHE`` picks the directory
(default ``$XDG_CACHE_HOME/epd-kernels``, else ``~/.cache/epd-kernels``, else the temp dir).
Concurrent builders (a cluster starting) each build to a temp file and rename it into place.

``decode_kernel`` / ``experts_kernel`` return None when the kernel is ready, else why not (no C
compiler, a failed build): the engine then keeps the library path and logs why. The kernels are
single-threaded: ``auto`` takes them where torch runs at most ``AUTO_MAX_THREADS`` threads (the
measured case); an explicit ``cpu`` takes them at any thread count.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from shared.engine.opaque import opaque_op

log = logging.getLogger(__name__)
NATIVE = Path(__file__).with_name("native")
FLAGS = (
    "-O3", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math", "-fassociative-math",
    "-fno-signed-zeros", "-ffp-contract=fast",
)  # fmt: skip
ARCH_FLAGS = ("-march=native",)  # dropped if the compiler refuses it
BUILD_TIMEOUT_S = 120
DTYPES = {torch.float32: "f32", torch.bfloat16: "bf16"}
_P, _I64 = ctypes.c_void_p, ctypes.c_int64
SIGNATURES = {  # argument types of <name>_f32 and <name>_bf16; both return int64
    "paged_decode": [_P, _P, _P, _P, _P, _P, _I64, _I64, _I64, _I64, ctypes.c_float],
    "routed_experts": [_P, _P, _P, _P, _P, _P, _I64, _I64, _I64],
    "argmax": [_P, _I64, _I64, _P],
}
MAX_EXPERT_TOKENS = 32  # tokens per MoE layer up to which routed_experts beats the grouped GEMM
# Experts larger than this (bytes of one expert's three projections) stream faster through the
# grouped GEMM's library kernel: at Qwen3-VL-30B-A3B's widths (18.9 MB in float32) the C kernel
# took 1.2-1.3x its time at 1 and 8 tokens (docs/BENCHMARKS.md); ``auto`` keeps the GEMM there.
AUTO_MAX_EXPERT_BYTES = 4 << 20
# The kernels run on the calling thread only. Measured faster than the library kernels at one and two
# torch threads (docs/BENCHMARKS.md); with more, ``auto`` keeps the library kernels and their pool.
AUTO_MAX_THREADS = 2


class KernelUnavailable(RuntimeError):
    """No C compiler, or the kernel did not build: the message says which."""


def cache_dir() -> Path:
    if path := os.environ.get("EPD_KERNEL_CACHE"):
        return Path(path)
    home = Path.home()
    base = Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache")
    if os.access(base if base.exists() else base.parent, os.W_OK):
        return base / "epd-kernels"
    return Path(tempfile.gettempdir()) / f"epd-kernels-{os.getuid()}"


def compiler() -> str | None:
    if cc := os.environ.get("CC"):
        return cc if shutil.which(cc.split()[0]) else None
    return next((cc for cc in ("cc", "gcc", "clang") if shutil.which(cc)), None)


def _cpu_identity() -> str:
    """What ``-march=native`` depends on: a cache shared between machines must not mix CPUs."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line for line in info.splitlines() if line.split(":")[0].strip() in wanted}))


def _build(cc: str, source: Path, defines: tuple[str, ...]) -> Path:
    version = subprocess.run([*cc.split(), "--version"], capture_output=True, text=True, timeout=30).stdout
    headers = [h.read_text() for h in sorted(source.parent.glob("*.h"))]  # what the source includes
    parts = (
        source.read_text(),
        *headers,
        " ".join(FLAGS + ARCH_FLAGS + defines),
        cc,
        version,
        _cpu_identity(),
    )
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]
    target = cache_dir() / f"{source.stem}-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".build-", suffix=".so")
    os.close(fd)
    try:
        for arch in (ARCH_FLAGS, ()):
            cmd = [*cc.split(), *FLAGS, *arch, *defines, "-o", tmp, str(source)]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
            if done.returncode == 0:
                os.replace(tmp, target)  # atomic: a concurrent builder's copy is as good
                log.info("built %s: %s", target.name, " ".join(cmd))
                return target
        raise KernelUnavailable(f"{cc} could not build {source.name}: {done.stderr.strip()[-400:]}")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def _load(name: str, defines: tuple[str, ...]) -> ctypes.CDLL:
    """The library of ``native/<name>.c`` built with these -D flags, its functions typed."""
    cc = compiler()
    if cc is None:
        raise KernelUnavailable("no C compiler (cc, gcc or clang on PATH, or CC)")
    try:
        lib = ctypes.CDLL(str(_build(cc, NATIVE / f"{name}.c", defines)))
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelUnavailable(f"{type(e).__name__}: {e}") from e
    for suffix in DTYPES.values():
        fn = getattr(lib, f"{name}_{suffix}")
        fn.argtypes = SIGNATURES[name]
        fn.restype = ctypes.c_int64
    return lib


def _available(name: str, defines: tuple[str, ...]) -> str | None:
    try:
        _load(name, defines)
    except KernelUnavailable as e:
        return str(e)
    return None


def _decode_defines(head_dim: int, group: int, block_size: int) -> tuple[str, ...]:
    return (f"-DHEAD_DIM={head_dim}", f"-DGROUP={group}", f"-DBLOCK_SIZE={block_size}")


def _experts_defines(hidden: int, intermediate: int) -> tuple[str, ...]:
    return (f"-DHIDDEN={hidden}", f"-DINTER={intermediate}")


def auto_reason() -> str | None:
    """Why ``auto`` should not pick these kernels in this thread (None: it should)."""
    if (n := torch.get_num_threads()) > AUTO_MAX_THREADS:
        return f"torch runs {n} threads and the C kernels one (auto takes them up to {AUTO_MAX_THREADS})"
    return None


def decode_kernel(head_dim: int, group: int, block_size: int) -> str | None:
    """Build (or find) the attention kernel for these sizes: None when it is ready, else why not."""
    return _available("paged_decode", _decode_defines(head_dim, group, block_size))


def experts_kernel(hidden: int, intermediate: int) -> str | None:
    """Build (or find) the experts kernel for these sizes: None when it is ready, else why not."""
    return _available("routed_experts", _experts_defines(hidden, intermediate))


def argmax_kernel() -> str | None:
    """Build (or find) the argmax kernel: None when it is ready, else why not."""
    return _available("argmax", ())


def row_argmax(x: torch.Tensor) -> torch.Tensor:
    """``torch.argmax(x, dim=-1)`` of a CPU float32/bfloat16 [R, V] matrix (``native/argmax.c``): the
    first index of each row's largest value, or of its first NaN. [R] int64."""
    if x.device.type != "cpu" or x.dtype not in DTYPES or x.dim() != 2 or x.shape[1] == 0:
        raise ValueError(
            f"row_argmax: a CPU float32/bfloat16 [R, V > 0] matrix, got {x.dtype} {tuple(x.shape)}"
        )
    lib = _load("argmax", ())
    x = x.contiguous()
    out = torch.empty(x.shape[0], dtype=torch.int64)
    getattr(lib, f"argmax_{DTYPES[x.dtype]}")(x.data_ptr(), x.shape[0], x.shape[1], out.data_ptr())
    return out


def decode_attention_fake(
    q: torch.Tensor,
    k_slots: torch.Tensor,
    v_slots: torch.Tensor,
    tables: torch.Tensor,
    lengths: torch.Tensor,
    block_size: int,
    scale: float,
) -> torch.Tensor:
    """The output's shape for the compiler, of this op and of the gather op (``decode_graph``)."""
    return torch.empty_like(q)


@opaque_op(
    "paged_decode_attention(Tensor q, Tensor k_slots, Tensor v_slots, Tensor tables, Tensor lengths,"
    " int block_size, float scale) -> Tensor",
    decode_attention_fake,
)
def paged_decode_attention(
    q: torch.Tensor,  # [B, Hq, D]
    k_slots: torch.Tensor,  # [N * block, Hkv, D]
    v_slots: torch.Tensor,
    tables: torch.Tensor,  # [B, W] int32
    lengths: torch.Tensor,  # [B] int32, each in [1, W * block]
    block_size: int,
    scale: float,
) -> torch.Tensor:
    b, hq, d = q.shape
    hkv = k_slots.shape[1]
    if q.device.type != "cpu" or q.dtype not in DTYPES or not (k_slots.dtype == v_slots.dtype == q.dtype):
        raise ValueError(f"paged_decode_attention: CPU float32/bfloat16 only, got {q.dtype} on {q.device}")
    if tables.dtype != torch.int32 or lengths.dtype != torch.int32 or hq % hkv:
        raise ValueError("paged_decode_attention: int32 tables and lengths, Hq a multiple of Hkv")
    if not (k_slots.is_contiguous() and v_slots.is_contiguous()) or k_slots.shape != v_slots.shape:
        raise ValueError("paged_decode_attention: k_slots and v_slots contiguous [slots, Hkv, D], same shape")
    lib = _load("paged_decode", _decode_defines(d, hq // hkv, block_size))
    q, tables, lengths = q.contiguous(), tables.contiguous(), lengths.contiguous()
    out = torch.empty_like(q)
    refused = getattr(lib, f"paged_decode_{DTYPES[q.dtype]}")(
        q.data_ptr(), k_slots.data_ptr(), v_slots.data_ptr(), tables.data_ptr(), lengths.data_ptr(),
        out.data_ptr(), b, hkv, tables.shape[1], k_slots.shape[0] // block_size, scale,
    )  # fmt: skip
    if refused:  # an engine bug, never a request's: the kernel read nothing for those rows
        raise RuntimeError(
            f"paged_decode_attention: {refused} row(s) with a length or block outside the pool"
        )
    return out


def routed_experts(
    x: torch.Tensor,  # [T, H]
    gate_up: torch.Tensor,  # [E, H, 2I]
    down: torch.Tensor,  # [E, I, H]
    topk_ids: torch.Tensor,  # [T, K]
    topk_weights: torch.Tensor,  # [T, K]
) -> torch.Tensor:
    """The routed experts of a few tokens (``native/routed_experts.c``): [T, H]."""
    e, h, i2 = gate_up.shape
    if x.device.type != "cpu" or x.dtype not in DTYPES or not (gate_up.dtype == down.dtype == x.dtype):
        raise ValueError(f"routed_experts: CPU float32/bfloat16 only, got {x.dtype} on {x.device}")
    if not (gate_up.is_contiguous() and down.is_contiguous()) or down.shape != (e, i2 // 2, h):
        raise ValueError("routed_experts: contiguous gate_up [E, H, 2I] and down [E, I, H]")
    lib = _load("routed_experts", _experts_defines(h, i2 // 2))
    if x.shape[0] == 0:
        return torch.empty_like(x)
    x = x.contiguous()
    ids = topk_ids.to(torch.int64).contiguous()
    weights = topk_weights.to(torch.float32).contiguous()
    out = torch.empty_like(x)
    status = getattr(lib, f"routed_experts_{DTYPES[x.dtype]}")(
        x.data_ptr(), gate_up.data_ptr(), down.data_ptr(), ids.data_ptr(), weights.data_ptr(),
        out.data_ptr(), x.shape[0], ids.shape[1], e,
    )  # fmt: skip
    if status == -1:
        raise ValueError(f"routed_experts: an expert id outside [0, {e})")
    if status:
        raise MemoryError("routed_experts: no memory for the kernel's scratch")
    return out
