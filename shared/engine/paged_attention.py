"""The paged ``AttentionBackend``: stores each layer's new K/V in the pool and attends over blocks.

Built once per step from the batch's metadata; everything that does not depend on the layer
(slot mapping, padded block tables, masks, row indices) is made here, so ``forward`` costs a few
tensor ops per layer whatever the batch size. Masks are made additive here (0 / -inf, what SDPA
would convert a boolean mask to in every layer).

Sequences are attended in padded groups, one SDPA call per group: their blocks are gathered into
``[C, Hkv, Lpad, D]``, their query rows into ``[C, Hq, Tpad, D]``, and a mask keeps each query to
its own causal prefix. Single-token sequences (decodes) form one group, where GQA costs nothing:
the G query heads of a KV head become G query rows of that head. Multi-token chunks form another
group when padding wastes at most half its work, else one group each (4-D SDPA calls throughout:
3-D ones take a slower path on the CPU).

Shape legend: T packed new tokens, C sequences of a group, Tpad their longest chunk, Lpad their
longest context rounded up to whole blocks, Hq/Hkv query/KV heads, G = Hq/Hkv, D head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from shared.engine.host import long_tensor
from shared.engine.kv_pool import KVPool
from shared.models.layers.attention import AttentionBackend

MAX_PADDING_WASTE = 2.0  # padded work / useful work above which chunks are attended one by one


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The float mask SDPA makes of a boolean one (0 where allowed, -inf elsewhere), made once per
    step instead of once per layer."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
        ~allowed, float("-inf")
    )


class _Group:
    """Sequences attended by one SDPA call; each is (packed offset, new tokens, context length, blocks)."""

    def __init__(self, seqs: list[tuple[int, int, int, list[int]]], pool: KVPool) -> None:
        block_size, device = pool.block_size, pool.device
        tpad = max(n for _, n, _, _ in seqs)
        num_blocks = [-(-length // block_size) for _, _, length, _ in seqs]
        nbmax = max(num_blocks)
        lpad = nbmax * block_size
        self.num_seqs, self.tpad = len(seqs), tpad
        self.valid: torch.Tensor | None  # query rows that are not padding (None: all are)
        self.mask: torch.Tensor | None  # additive attention mask (None: plain causal)
        flat: list[int] = []  # block tables padded with block 0 (masked out), one flat list: fast to convert
        for (_, _, _, table), nb in zip(seqs, num_blocks, strict=True):
            flat += table[:nb]
            flat += [0] * (nbmax - nb)
        self.blocks = long_tensor(flat, device)  # [C * nbmax]
        self.first = seqs[0][0]
        cols = torch.arange(lpad, device=device)
        if tpad == 1:  # decodes: one query row each, the row of its offset; the mask is the context length
            offsets = [off for off, _, _, _ in seqs]
            self.rows = self.dest = long_tensor(offsets, device)  # [C]
            self.in_order = offsets == list(range(self.first, self.first + len(seqs)))
            self.valid = None
            lengths = long_tensor([length for _, _, length, _ in seqs], device)
            self.is_causal = False
            allowed = cols[None, :] < lengths[:, None]  # [C, Lpad]
            self.mask = _additive(allowed, pool.dtype)[:, None, None, :]  # [C, 1, 1, Lpad]
            return
        rows = [[off + min(i, n - 1) for i in range(tpad)] for off, n, _, _ in seqs]  # padding repeats a row
        self.rows = long_tensor([r for row in rows for r in row], device)  # [C * Tpad] rows of the queries
        self.in_order = rows == [
            list(range(self.first + c * tpad, self.first + (c + 1) * tpad)) for c in range(len(seqs))
        ]
        valid = [c * tpad + i for c, (_, n, _, _) in enumerate(seqs) for i in range(n)]
        self.valid = None if len(valid) == len(self.rows) else long_tensor(valid, device)
        self.dest = long_tensor([off + i for off, n, _, _ in seqs for i in range(n)], device)
        q_pos = torch.tensor([[length - n + min(i, n - 1) for i in range(tpad)] for _, n, length, _ in seqs])
        mask = cols[None, None, :] <= q_pos.to(device)[:, :, None]  # [C, Tpad, Lpad]
        self.is_causal = len(seqs) == 1 and seqs[0][1] == seqs[0][2] == lpad  # plain causal, no mask needed
        self.mask = None if self.is_causal else _additive(mask, pool.dtype)[:, None]  # [C, 1, Tpad, Lpad]

    def attend(self, pool: KVPool, layer: int, q: torch.Tensor, scale: float) -> torch.Tensor:
        """Outputs [C * Tpad, Hq, D] of this group's query rows (padding rows included)."""
        c, hq, d = self.num_seqs, q.shape[1], q.shape[2]
        hkv = pool.k.shape[3]
        k, v = pool.gather(layer, self.blocks)  # [C * Lpad, Hkv, D]
        k = k.view(c, -1, hkv, d).transpose(1, 2)  # [C, Hkv, Lpad, D]
        v = v.view(c, -1, hkv, d).transpose(1, 2)
        qg = q.narrow(0, self.first, c * self.tpad) if self.in_order else q.index_select(0, self.rows)
        if self.tpad == 1:
            out = F.scaled_dot_product_attention(
                qg.view(c, hkv, hq // hkv, d), k, v, attn_mask=self.mask, scale=scale
            )
            return out.reshape(c, hq, d)  # [C, Hq, D]
        qg = qg.view(c, self.tpad, hq, d).transpose(1, 2)  # [C, Hq, Tpad, D]
        out = F.scaled_dot_product_attention(
            qg, k, v, attn_mask=self.mask, is_causal=self.is_causal, scale=scale, enable_gqa=hq != hkv
        )
        return out.transpose(1, 2).reshape(c * self.tpad, hq, d)


class PagedBackend(AttentionBackend):
    """What every paged backend is built from (a step's metadata) and how it stores a layer's new
    K/V: each token's rows into its slot of the pool."""

    def __init__(
        self,
        pool: KVPool,
        query_lens: list[int],
        seq_lens: list[int],  # context lengths including this step's tokens
        block_tables: list[list[int]],
        slot_mapping: torch.Tensor,  # [T] slot of each new token
        scale: float,
    ) -> None:
        self.pool, self.scale, self.slot_mapping = pool, scale, slot_mapping
        self.query_lens, self.seq_lens, self.block_tables = query_lens, seq_lens, block_tables

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [T, Hkv, D] into the pool; returns the layer's slots [N*bs, Hkv, D] (K, V)."""
        k_slots, v_slots = self.pool.slots(layer)
        k_slots.index_copy_(0, self.slot_mapping, k)
        v_slots.index_copy_(0, self.slot_mapping, v)
        return k_slots, v_slots


class PagedAttention(PagedBackend):
    """Blocks gathered into padded groups, one SDPA call per group (the module docstring)."""

    def __init__(
        self,
        pool: KVPool,
        query_lens: list[int],
        seq_lens: list[int],
        block_tables: list[list[int]],
        slot_mapping: torch.Tensor,
        scale: float,
    ) -> None:
        super().__init__(pool, query_lens, seq_lens, block_tables, slot_mapping, scale)
        singles: list[tuple[int, int, int, list[int]]] = []  # (offset, q_len, length, blocks)
        chunks: list[tuple[int, int, int, list[int]]] = []
        offset = 0
        for q_len, length, table in zip(query_lens, seq_lens, block_tables, strict=True):
            (singles if q_len == 1 else chunks).append((offset, q_len, length, table))
            offset += q_len
        self.num_tokens = offset
        self.groups = [_Group(singles, pool)] if singles else []
        if chunks:
            useful = sum(n * length for _, n, length, _ in chunks)
            padded = len(chunks) * max(n for _, n, _, _ in chunks) * max(length for _, _, length, _ in chunks)
            if padded <= MAX_PADDING_WASTE * useful:
                self.groups.append(_Group(chunks, pool))
            else:
                self.groups += [_Group([c], pool) for c in chunks]

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.store(layer, k, v)
        only = self.groups[0] if len(self.groups) == 1 else None
        if only is not None and only.in_order and only.valid is None and len(only.rows) == self.num_tokens:
            return self.groups[0].attend(self.pool, layer, q, self.scale)  # e.g. a pure decode batch
        out = torch.empty_like(q)  # [T, Hq, D]
        for g in self.groups:
            rows = g.attend(self.pool, layer, q, self.scale)
            out.index_copy_(0, g.dest, rows if g.valid is None else rows.index_select(0, g.valid))
        return out
