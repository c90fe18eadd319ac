"""A gather-free paged ``AttentionBackend`` on FlexAttention: the kernel reads K/V in the pool's blocks.

Where ``PagedAttention`` copies each sequence's blocks into a padded tensor before SDPA, this
backend hands FlexAttention a whole layer of the pool, ``[1, Hkv, N*B, D]`` (a view of
``pool.slots(layer)``: the CPU kernel takes any strides with a contiguous last dim, so nothing is
copied), with a ``BlockMask`` whose KV block is the pool's block: each query block lists the
physical blocks its sequence holds, and the kernel visits those where they lie, nothing else.

Layout. The G query heads of a KV head are folded into query rows, ``[1, Hkv, T*G, D]`` (row
``t*G + g`` is head ``h*G + g`` of token t; one copy of q in, one of the output back), and one
query block is one token's G rows. A query block therefore never spans two sequences, so the
listing is exact: the blocks wholly at or before the token are "full" (no mask evaluated), and at
most one, the block holding the token, is partial; there ``mask_mod`` keeps the slots up to the
token's offset. Blocks shared through the prefix cache are listed for every sequence holding
them. The per-element check a query block shared by several sequences would need (is this KV
block in this row's table?) never arises, so the mask reads one small buffer.

Why one token per query block (CPU, fp32, 1 thread, Hq 32 / Hkv 4 / D 128, ``bench/attention_bench.py``
for the whole comparison):
- decodes: query blocks holding several decode rows make the kernel score the union of their
  blocks (and it searches the partial-block list for every visited block: quadratic); even one
  padding token per decode doubles the time (16 decodes at 2k: 120 ms with G rows per block,
  235 ms with 2G, 415 ms with 4G). Folding heads into rows beats ``enable_gqa`` with one row per
  block ~3x (64 decodes at 2k: 583 vs 1621 ms): the G heads share each K/V load and score GEMM.
- prefill pays for it: one chunk of 512 on 1k cached takes 1530 ms with one token per block and
  1205 ms with 8; the gather + SDPA backend is faster still for prefill on CPU (~600 ms).

Compilation. ``flex_attention`` runs compiled (eager flex materialises scores over all N*B slots),
once per process and (Hq, Hkv, D, B, N) class: what changes per step (T, the table width) is
symbolic, what belongs to the pool is static. Two CPU-template constraints shape the metadata:
the partial-block index tensor must be N columns wide (only column 0 is written), and the mask
may read only buffers of static size (Inductor renames size symbols in the mask code by string
replacement, which garbles symbolic sizes), so the per-token offsets live in an [N*B] buffer (a
step's tokens each own a slot: T <= N*B) and block size and G are 0-d tensors. The per-step
sizes are padded to differ from each other (Dynamo ties equal sizes together) and from 1 (it
specialises 1); only the query rows cannot be padded, so with G = 1 a one-token step compiles
once more. The first compile takes ~25 s on 2 cores (~3 s from Inductor's disk cache); a pool of
another size recompiles (~10 s). Each compiled call costs ~0.2 ms of guards and wrapper on top
of the kernel, which small decode batches feel.

Shape legend: T packed new tokens, T' = T + 1 or T + 2 query-block entries (padding), S sequences,
N pool blocks, B block size, W widest block table (padded), Hq/Hkv query/KV heads, G = Hq/Hkv,
D head dim.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from shared.engine.host import long_tensor
from shared.engine.kv_pool import KVPool
from shared.engine.paged_attention import PagedBackend

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# The transposed (query-side) block lists serve only the backward pass: skipped where torch can
# (``compute_q_blocks`` is newer than torch 2.11, which builds them).
NO_Q_BLOCKS: dict[str, Any] = (
    {"compute_q_blocks": False}
    if "compute_q_blocks" in inspect.signature(BlockMask.from_kv_blocks).parameters
    else {}
)

# The CPU template wants q, k, v as graph inputs, so the folding of heads into rows stays outside.
_compiled_flex = torch.compile(flex_attention, dynamic=True)

_views: weakref.WeakKeyDictionary[KVPool, list[tuple[torch.Tensor, torch.Tensor]]] = (
    weakref.WeakKeyDictionary()
)


def _layer_views(pool: KVPool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """K, V [1, Hkv, N*B, D] of every layer, views of the pool with a static length, made once
    per pool (marking costs ~6 us a tensor)."""
    if pool not in _views:
        views = []
        for layer in range(pool.num_layers):
            k, v = (x.transpose(0, 1).unsqueeze(0) for x in pool.slots(layer))
            torch._dynamo.mark_static(k, 2)
            torch._dynamo.mark_static(v, 2)
            views.append((k, v))
        _views[pool] = views
    return _views[pool]


def _distinct(n: int, taken: tuple[int, ...]) -> int:
    """The least size >= n equal to none of ``taken`` (Dynamo specialises 1, may tie equal sizes)."""
    while n in taken:
        n += 1
    return n


def _mask_in_block(offsets: torch.Tensor, block_size: torch.Tensor, group: torch.Tensor) -> MaskMod:
    """In a row's partial block (the only one masked), the slots up to its token's offset.
    offsets [N*B] by token; block_size and group 0-d."""

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return kv_idx % block_size <= offsets[q_idx // group]

    return mask_mod


def build_block_mask(
    pool: KVPool, group: int, query_lens: list[int], seq_lens: list[int], block_tables: list[list[int]]
) -> BlockMask:
    """One query block per token (its G rows): full blocks are its table up to the block before
    the token's, the partial block is the token's own unless the token fills it."""
    bs, nblocks, dev = pool.block_size, pool.num_blocks, pool.device
    num_tokens = sum(query_lens)
    rows = num_tokens * group
    entries = _distinct(num_tokens + 1, (rows,))  # T'
    width = _distinct(max(-(-n // bs) for n in seq_lens), (1, entries, rows))  # W
    flat: list[int] = []  # tables [S, W], then the sequence and the position of each token [T]
    seq_of_token: list[int] = []
    q_pos: list[int] = []
    for s, (n, length, table) in enumerate(zip(query_lens, seq_lens, block_tables, strict=True)):
        nb = -(-length // bs)
        flat += table[:nb]
        flat += [0] * (width - nb)
        seq_of_token += [s] * n
        q_pos += range(length - n, length)
    meta = long_tensor(flat + seq_of_token + q_pos, dev)  # the step's one host -> device copy
    tables = meta[: len(flat)].view(-1, width)  # [S, W]
    seq, pos = meta[len(flat) :].view(2, num_tokens)  # [T] each

    # Entries past T (padding) and past each row's count are never read: left uninitialised.
    full_num = torch.empty(entries, dtype=torch.int32, device=dev)
    full_num[:num_tokens] = torch.div(pos + 1, bs, rounding_mode="floor")
    full_idx = torch.empty(entries, width, dtype=torch.int32, device=dev)
    full_idx[:num_tokens] = tables.index_select(0, seq)
    part_num = torch.empty(entries, dtype=torch.int32, device=dev)
    part_num[:num_tokens] = (pos + 1) % bs != 0
    part_idx = torch.empty(entries, nblocks, dtype=torch.int32, device=dev)  # N wide: the CPU kernel's rule
    part_idx[:num_tokens, 0] = tables[seq, torch.div(pos, bs, rounding_mode="floor")]
    offsets = torch.empty(nblocks * bs, dtype=torch.long, device=dev)  # [N*B]
    offsets[:num_tokens] = pos % bs

    full_num, full_idx, part_num, part_idx = (x[None, None] for x in (full_num, full_idx, part_num, part_idx))
    for x in (full_num, full_idx, part_num, part_idx):  # else compiled static at first, then again
        torch._dynamo.mark_dynamic(x, 2)
    torch._dynamo.mark_dynamic(full_idx, 3)
    torch._dynamo.mark_static(part_idx, 3)
    torch._dynamo.mark_static(offsets, 0)
    mask_mod = _mask_in_block(offsets, torch.tensor(bs, device=dev), torch.tensor(group, device=dev))
    return BlockMask.from_kv_blocks(
        part_num,
        part_idx,
        full_num,
        full_idx,
        BLOCK_SIZE=(group, bs),
        mask_mod=mask_mod,
        seq_lengths=(rows, nblocks * bs),
        **NO_Q_BLOCKS,
    )


class FlexPagedAttention(PagedBackend):
    """Paged attention without gather, built as ``PagedAttention`` is. The caller runs it without
    autograd (``torch.inference_mode``): the compiled CPU kernel is inference only. The block mask
    is built at the first layer, where q tells G, and serves every layer."""

    block_mask: BlockMask | None = None

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.store(layer, k, v)
        t, hq, d = q.shape
        hkv = k.shape[1]
        g = hq // hkv
        if self.block_mask is None:
            self.block_mask = build_block_mask(
                self.pool, g, self.query_lens, self.seq_lens, self.block_tables
            )
        rows = q.view(t, hkv, g, d).transpose(0, 1).reshape(1, hkv, t * g, d)  # [1, Hkv, T*G, D]
        if t * g > 1:  # its own symbol, never tied to an equal head count or D (a size of 1 specialises)
            torch._dynamo.mark_dynamic(rows, 2)
        k_pool, v_pool = _layer_views(self.pool)[layer]  # [1, Hkv, N*B, D]
        out = _compiled_flex(rows, k_pool, v_pool, block_mask=self.block_mask, scale=self.scale)
        return out.view(hkv, t, g, d).transpose(0, 1).reshape(t, hq, d)
