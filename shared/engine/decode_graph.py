"""The decode step as one compiled graph: ``torch.compile`` on the CPU, a CUDA graph on a GPU.

Owns the step that repeats most often: a batch of decodes only (one generated token per
sequence, no images). It is the same model code as the eager path, traced once with
``fullgraph=True``:

- attention reads each sequence's KV blocks where they lie in the pool: on a GPU
  ``FlexDecodeAttention`` (FlexAttention with a block mask, GQA in the kernel), on a CPU
  ``CpuDecodeAttention`` (the C kernel of ``cpu_kernels``); ``GatherDecodeAttention`` (blocks
  copied out, then SDPA) where that kernel cannot be built;
- MoE layers call the ``epd::routed_experts`` opaque op (``moe_kernels``, ``opaque``): one node
  per layer, token counts per expert computed on the device (on a CPU, the C kernel);
- the step's metadata is one small int32 tensor built on the host and copied to the device once
  (``pack``); everything derived from it is computed in the graph;
- a step whose shapes Dynamo accepted once calls Inductor's compiled function directly
  (``graph_entry``): Dynamo's entry cost ~90 us a step, a tenth of the demo model's.

Static shapes on CUDA: a batch is padded to a bucket of ``batch_buckets`` and its block tables to a
width bucket (powers of two). On the CPU a batch runs at its own size and its tables at the widest
one (each at least 2: a size of 1 would be specialised); padding a batch of 5 to 8 cost 6-12% of the
demo model's step (docs/BENCHMARKS.md). Padded rows decode token 0 at position 0 into a sink
block that the block allocator never hands out, attend to that block only, and their logits are
dropped, so they never touch a real row. The width is compiled symbolic everywhere, and so is the
batch on the CPU (one graph for every size); on CUDA the graph is compiled per batch bucket
(``warmup`` does all) and replayed as CUDA graphs (``triton.cudagraphs``, what
``mode="reduce-overhead"`` sets), recorded once per (bucket, width) met: why CUDA batches are
padded to a few sizes rather than run at any size.
The pool's block count is a constant of the graph, kept the same from start to start by
``memory`` (so that Inductor's cache serves later starts). Compiling it symbolic was tried: every
layer's pool views then enter the graph with a size and an offset each, ints that the C++ wrapper
turns into tensors at every call (+55 us a step at batch 3 on the demo model, ~8%; worse with 48
layers), and views made inside the graph instead made Inductor copy the whole pool back each step.

When. ``compile`` (``warmup``) compiles before the engine serves: on CUDA it captures every
bucket. Compiling in a thread while the engine serves eager steps was tried and dropped: on the
CPU the compiler holds the GIL for seconds at a time, every eager op of the serving thread then
waits for it, and a decode worker under load stopped sending heartbeats (requests failed). Where
compiling fails (Inductor finds no C++ compiler, say) ``compile`` logs why and decode steps stay
eager.

Shape legend: B real rows, Bp padded rows, W block-table width, N pool blocks (sink included),
V vocabulary.
"""

from __future__ import annotations

import logging
import time
from array import array
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from shared.engine.compiler_check import missing_compiler
from shared.engine.cpu_kernels import decode_attention_fake, paged_decode_attention
from shared.engine.flex_attention import NO_Q_BLOCKS
from shared.engine.graph_entry import DirectCompiled
from shared.engine.kv_pool import KVPool
from shared.engine.opaque import opaque_op
from shared.engine.scheduler import ScheduledSeq
from shared.models.layers.attention import AttentionBackend
from shared.models.qwen3_vl_moe import Qwen3VLMoeForConditionalGeneration

log = logging.getLogger(__name__)
META_COLUMNS = 6  # token id, position, slot, blocks in use, last block, offset in it; then the table
MIN_WIDTH = 16


def batch_buckets(max_num_seqs: int) -> list[int]:
    """2, 4, 8, then multiples of 8 up to ``max_num_seqs`` (at least one bucket holds it). Batch 1
    is padded to 2: a dimension of size 1 would be specialised by the compiler into its own graph."""
    buckets = [2, 4, 8]
    while buckets[-1] < max_num_seqs:
        buckets.append(buckets[-1] + 8)
    return [b for i, b in enumerate(buckets) if i == 0 or buckets[i - 1] < max_num_seqs]


class DecodeAttention(AttentionBackend):
    """One query row per sequence over the paged pool; stores the rows' new K/V, then ``attend``.

    Padding rows (their last block is the sink, the pool's last block) get a zero output, whatever
    their inputs: with zero embeddings (``DecodeGraph``) their hidden states are then the same in
    every step, so their MoE routing, and with it the expert groups that real rows are computed in,
    never depends on what the padding holds.
    """

    def __init__(
        self,
        pool: KVPool,
        slots: torch.Tensor,  # [Bp] slot of each row's new token
        tables: torch.Tensor,  # [Bp, W] int32 block tables, padded
        num_blocks: torch.Tensor,  # [Bp] int32 blocks in use
        last_block: torch.Tensor,  # [Bp] int32
        last_offset: torch.Tensor,  # [Bp] int32 offset of the newest token in its block
        scale: float,
    ) -> None:
        self.pool, self.slots, self.scale = pool, slots, scale
        self.tables, self.num_blocks, self.last_block, self.last_offset = (
            tables,
            num_blocks,
            last_block,
            last_offset,
        )
        self.real = (last_block != pool.num_blocks - 1)[:, None, None]  # [Bp, 1, 1]: not padding

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        k_slots, v_slots = self.pool.slots(layer)  # [N * block, Hkv, D]
        k_slots.index_copy_(0, self.slots, k)
        v_slots.index_copy_(0, self.slots, v)
        return torch.where(self.real, self.attend(q, k_slots, v_slots), 0.0)  # [Bp, Hq, D]; padding: 0

    def attend(self, q: torch.Tensor, k_slots: torch.Tensor, v_slots: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class FlexDecodeAttention(DecodeAttention):
    """FlexAttention reading the blocks where they lie: each row's block-mask row lists exactly its
    blocks, ``mask_mod`` keeps every slot of its full blocks and, in its last block, the slots up to
    the newest token. The pool layer is the key/value tensor ``[1, Hkv, N * block, D]`` (a view, no
    copy), broadcast over the batch; GQA in the kernel. The kernel for GPUs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        bs = self.pool.block_size
        last_block, last_offset = self.last_block, self.last_offset

        def mask_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
            return (kv // bs != last_block[b]) | (kv % bs <= last_offset[b])

        full = F.pad(self.tables, (0, self.pool.num_blocks - self.tables.shape[1]))  # [Bp, N]: spans the pool
        self.mask = BlockMask.from_kv_blocks(
            self.num_blocks[:, None, None],
            full[:, None, None, :],
            BLOCK_SIZE=(1, bs),
            mask_mod=mask_mod,
            **NO_Q_BLOCKS,
        )

    def attend(self, q: torch.Tensor, k_slots: torch.Tensor, v_slots: torch.Tensor) -> torch.Tensor:
        keys = k_slots.permute(1, 0, 2)[None]  # [1, Hkv, N * block, D]
        values = v_slots.permute(1, 0, 2)[None]
        # The scale goes into q: a fresh [Bp, Hq, 1, D] buffer (the CPU kernel rejects a view of a 3-D one).
        out = flex_attention(
            q[:, :, None, :] * self.scale, keys, values, block_mask=self.mask, scale=1.0, enable_gqa=True
        )
        assert isinstance(out, torch.Tensor)
        return out[:, :, 0, :]


class GatherDecodeAttention(DecodeAttention):
    """``epd::gather_decode_attention``: each row's blocks gathered into ``[Bp, Hkv, W * block, D]``
    and one SDPA call, behind an opaque op (``opaque.py``: one extern call in the graph). It moves more memory than
    FlexAttention but, on the CPU, FlexAttention's kernel costs more at small head sizes (measured in
    docs/BENCHMARKS.md): the CPU's fallback where the C kernel cannot be built."""

    def attend(self, q: torch.Tensor, k_slots: torch.Tensor, v_slots: torch.Tensor) -> torch.Tensor:
        lengths = (self.num_blocks - 1) * self.pool.block_size + self.last_offset + 1  # [Bp]
        return gather_decode_attention(
            q, k_slots, v_slots, self.tables, lengths, self.pool.block_size, self.scale
        )


class CpuDecodeAttention(DecodeAttention):
    """``epd::paged_decode_attention`` (``cpu_kernels``): a C loop over each row's blocks where they
    lie in the pool, one opaque node in the graph. The CPU's kernel where it builds."""

    def attend(self, q: torch.Tensor, k_slots: torch.Tensor, v_slots: torch.Tensor) -> torch.Tensor:
        lengths = (self.num_blocks - 1) * self.pool.block_size + self.last_offset + 1  # [Bp] int32
        return paged_decode_attention(
            q, k_slots, v_slots, self.tables, lengths, self.pool.block_size, self.scale
        )


@opaque_op(
    "gather_decode_attention(Tensor q, Tensor k_slots, Tensor v_slots, Tensor tables, Tensor lengths,"
    " int block_size, float scale) -> Tensor",
    decode_attention_fake,
)
def gather_decode_attention(
    q: torch.Tensor,  # [Bp, Hq, D]
    k_slots: torch.Tensor,  # [N * block, Hkv, D]
    v_slots: torch.Tensor,
    tables: torch.Tensor,  # [Bp, W] int32
    lengths: torch.Tensor,  # [Bp] int32 context lengths
    block_size: int,
    scale: float,
) -> torch.Tensor:
    bp, hq, d = q.shape
    hkv = k_slots.shape[1]
    blocks = tables.flatten().long()  # [Bp * W]
    keys = k_slots.view(-1, block_size * hkv * d).index_select(0, blocks).view(bp, -1, hkv, d).transpose(1, 2)
    values = (
        v_slots.view(-1, block_size * hkv * d).index_select(0, blocks).view(bp, -1, hkv, d).transpose(1, 2)
    )
    allowed = torch.arange(keys.shape[2], device=q.device)[None, :] < lengths[:, None]  # [Bp, W * block]
    out = F.scaled_dot_product_attention(
        q.view(bp, hkv, hq // hkv, d), keys, values, attn_mask=allowed[:, None, None, :], scale=scale
    )
    return out.reshape(bp, hq, d)


DECODE_ATTENTION: dict[str, type[DecodeAttention]] = {
    "flex": FlexDecodeAttention,
    "gather": GatherDecodeAttention,
    "cpu": CpuDecodeAttention,
}


class DecodeGraph:
    """Compiled decode steps over one pool; ``run`` takes a decode-only batch, returns logits [B, V]."""

    def __init__(
        self,
        model: Qwen3VLMoeForConditionalGeneration,
        pool: KVPool,
        max_num_seqs: int,
        attention: str,  # a key of DECODE_ATTENTION
        direct: bool = True,  # skip Dynamo's entry at shapes it accepted once (graph_entry)
    ) -> None:
        self.model, self.pool = model, pool
        self.attention = DECODE_ATTENTION[attention]
        self.sink = pool.num_blocks - 1  # the engine's allocator never hands this block out
        self.device = pool.device
        self.scale = model.config.text.head_dim**-0.5
        self.buckets = batch_buckets(max_num_seqs)
        self.cuda = self.device.type == "cuda"
        _raise_recompile_limit(64)
        if self.cuda:  # the pool is mutated in place by every step: give it a fixed address
            torch._dynamo.mark_static_address(pool.k)
            torch._dynamo.mark_static_address(pool.v)
        self.steps = 0  # decode steps run through the graph
        self.warmup_seconds = 0.0
        self.ready = False  # compiled: until then (or if compiling failed) ``fits`` is False, steps eager
        self.error: str | None = None  # why compiling failed
        # One compile for every table width; on the CPU, for every batch bucket too.
        dynamic = [(0, 1)] if self.cuda else [(0, 1), (0, 0), (1, 0), (2, 0)]
        self._step = DirectCompiled(
            self._forward, ("meta", "last_block", "last_offset"), inductor_options(self.cuda), direct, dynamic
        )

    def bucket(self, batch_size: int) -> int:
        """Rows the step runs: on CUDA the next bucket (a graph is recorded per bucket); on the CPU,
        whose graph is symbolic in the batch, the batch itself, at least 2."""
        if not self.cuda:
            return max(2, batch_size)
        return next(b for b in self.buckets if b >= batch_size)

    def fits(self, batch: list[ScheduledSeq]) -> bool:
        return self.ready and len(batch) <= self.buckets[-1]

    def pack(self, batch: list[ScheduledSeq]) -> torch.Tensor:
        """The step's metadata [Bp, 6 + W] int32 on the host; padded rows aim at the sink block."""
        bs = self.pool.block_size
        rows = []
        for s in batch:
            seq, i = s.seq, s.start
            table = seq.block_table
            used = i // bs + 1
            rows.append(
                [
                    seq.token_ids[i],
                    i + seq.mrope_delta,
                    table[i // bs] * bs + i % bs,
                    used,
                    table[used - 1],
                    i % bs,
                    *table[:used],
                ]
            )
        bp = self.bucket(len(batch))
        widest = max(len(r) for r in rows) - META_COLUMNS
        # A CUDA graph is recorded per width: a few widths. The CPU graph takes any width from 2 up as
        # it is (a size of 1 would be specialised), and a padded table costs gathered blocks and
        # attention over them.
        width = max(MIN_WIDTH, 1 << (widest - 1).bit_length()) if self.cuda else max(2, widest)
        pad_row = [0, 0, self.sink * bs, 1, self.sink, 0, self.sink]
        rows += [pad_row] * (bp - len(batch))
        cols = META_COLUMNS + width
        flat = array("i")  # one buffer copy into the tensor (torch.tensor of a list walks each int)
        for row in rows:
            flat.extend(row)
            flat.extend([0] * (cols - len(row)))
        return torch.frombuffer(flat, dtype=torch.int32).view(bp, cols)  # keeps the array alive

    @torch.inference_mode()
    def run(self, batch: list[ScheduledSeq]) -> torch.Tensor:
        self.steps += 1
        return self._call(self.pack(batch))[: len(batch)]

    @torch.inference_mode()
    def warmup(self) -> float:
        """Compile before serving (on CUDA: capture every batch bucket) with rows of padding only;
        returns the seconds it took. The padding rows write only to the sink block."""
        start = time.perf_counter()
        bs = self.pool.block_size
        for bp in self.buckets if self.cuda else self.buckets[-1:]:
            meta = torch.zeros(bp, META_COLUMNS + MIN_WIDTH, dtype=torch.int32)
            meta[:, 2], meta[:, 3], meta[:, 4], meta[:, META_COLUMNS] = (
                self.sink * bs,
                1,
                self.sink,
                self.sink,
            )
            self._call(meta)
        self.warmup_seconds = time.perf_counter() - start
        self.ready = True
        return self.warmup_seconds

    def compile(self) -> bool:
        """``warmup``, logged; on failure (no C++ compiler for Inductor, say) the reason is logged and
        kept in ``error``, and decode steps stay eager. Returns whether the graph is ready."""
        if reason := missing_compiler(self.device):
            self.error = reason
            log.warning("decode graph not compiled, decode steps stay eager: %s", reason)
            return False
        try:
            seconds = self.warmup()
        except Exception as e:  # noqa: BLE001 - whatever the compiler raises: serve eager, say why
            self.error = f"{type(e).__name__}: {e}".splitlines()[0]
            log.warning("decode graph not compiled, decode steps stay eager: %s", self.error)
            return False
        log.info("decode graph for batches up to %d compiled in %.1f s", self.buckets[-1], seconds)
        return True

    def _call(self, meta: torch.Tensor) -> torch.Tensor:
        # The mask's inputs travel as tensors of their own: the CPU kernel takes only graph inputs there.
        inputs = [
            t.to(self.device, non_blocking=True) for t in (meta, meta[:, 4].clone(), meta[:, 5].clone())
        ]
        return self._step(*inputs)  # marked dynamic there (``dynamic`` above) when Dynamo sees them

    def _forward(
        self, meta: torch.Tensor, last_block: torch.Tensor, last_offset: torch.Tensor
    ) -> torch.Tensor:
        ids, pos, slots = meta[:, 0].long(), meta[:, 1].long(), meta[:, 2].long()
        attn = self.attention(
            self.pool, slots, meta[:, META_COLUMNS:], meta[:, 3], last_block, last_offset, self.scale
        )
        lm = self.model.model
        assert lm is not None
        embeds = torch.where(attn.real[:, 0], lm.embed_tokens(ids), 0.0)  # [Bp, H]; zero for padding
        hidden = self.model(embeds, pos.expand(3, -1), attn, None)  # [Bp, H]
        return self.model.compute_logits(hidden)  # [Bp, V]


def inductor_options(cuda: bool) -> dict[str, Any]:
    """Inductor's settings for the decode step (those this torch has).

    On CUDA the step is replayed as a CUDA graph (what mode="reduce-overhead" sets). On the CPU the
    graph's wrapper is C++ rather than Python, and the graph's inputs are not asserted for size and
    alignment (the step builds them itself; an assert is a call per input per step): the demo's step
    at batch 32 took 0.81 ms with both, 0.85 ms without the C++ wrapper and 0.89 ms with neither
    (medians of six alternations, docs/BENCHMARKS.md); the C++ wrapper costs ~3.5 s more to compile
    cold (16.4 -> 19.9 s; 2.6 s either way from Inductor's cache). No epilogue fusion: the CPU
    FlexAttention kernel cannot take the padding rows' mask as its epilogue."""
    wanted = {
        "triton.cudagraphs": cuda,
        "cpp_wrapper": not cuda,
        "epilogue_fusion": False,
        "size_asserts": False,
        "alignment_asserts": False,
    }
    config = torch._inductor.config
    return {k: v for k, v in wanted.items() if _has_setting(config, k)}


def _has_setting(config: Any, name: str) -> bool:
    head, _, rest = name.partition(".")
    return hasattr(config, head) and (not rest or _has_setting(getattr(config, head), rest))


def _raise_recompile_limit(limit: int) -> None:
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.7
    setattr(config, name, max(getattr(config, name), limit))
