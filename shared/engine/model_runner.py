"""One forward pass over a scheduled batch: pack inputs, run the model, return logits to sample.

Owns the model and the KV pool's tensors during a step. ``run`` packs the new tokens of every
scheduled sequence end to end, with their MRoPE positions, their image rows (the image
embeddings replace the token embeddings at image positions) and the deepstack rows of the images
that fall in this step's chunk (so an image split by a chunk boundary contributes exactly the rows
of each part); it builds the ``PagedAttention`` backend from the block tables, runs the model and
computes logits only for sequences whose last token was computed (the ones that sample).

The attention backend is the engine's choice (``EngineConfig.attention_for``): ``PagedAttention``
(blocks gathered, then SDPA; the reference) or ``FlexPagedAttention`` (blocks read in place); with
``cpu``, batches that mix prefill chunks gather and decode-only ones run the C kernel
(``CpuDecodeAttention``). Decode-only batches go to the compiled ``DecodeGraph`` when the engine
built one.

Shape legend: T packed tokens, H hidden, N image tokens in the batch, S deepstack levels, R rows
that sample, V vocabulary.
"""

from __future__ import annotations

import torch

from shared.engine.decode_graph import CpuDecodeAttention, DecodeGraph
from shared.engine.flex_attention import FlexPagedAttention
from shared.engine.host import long_tensor
from shared.engine.kv_pool import KVPool
from shared.engine.paged_attention import PagedAttention
from shared.engine.scheduler import ScheduledSeq
from shared.models.language import DeepstackInput
from shared.models.qwen3_vl_moe import Qwen3VLMoeForConditionalGeneration


class ModelRunner:
    def __init__(
        self,
        model: Qwen3VLMoeForConditionalGeneration,
        pool: KVPool,
        graph: DecodeGraph | None = None,
        attention: str = "gather",
    ) -> None:
        if model.model is None:
            raise ValueError("the engine needs a model loaded with its language part")
        self.model = model
        self.pool = pool
        self.device = pool.device
        self.scale = model.config.text.head_dim**-0.5
        self.graph = graph  # compiled decode steps, when enabled
        self.attention = FlexPagedAttention if attention == "flex" else PagedAttention
        self.cpu_decode = attention == "cpu"  # decode-only batches: the C kernel

    @torch.inference_mode()
    def run(self, batch: list[ScheduledSeq]) -> tuple[list[ScheduledSeq], torch.Tensor | None]:
        """Compute the batch; returns the entries that sample and their logits [R, V]."""
        if self.decode_only(batch):
            if self.graph is not None and self.graph.fits(batch):
                return batch, self.graph.run(batch)
            return batch, self._run_decode(batch)
        dev = self.device
        bs = self.pool.block_size
        ids: list[int] = []
        slots: list[int] = []
        linear: list[int] = []  # position of each packed token as if it were text: index + delta
        grid_parts: list[tuple[int, torch.Tensor]] = []  # (packed offset, [3, n]) of prompt positions
        image_rows, image_index, deepstack_rows = [], [], []
        sample_rows: list[int] = []
        sampling: list[ScheduledSeq] = []
        offset = 0
        for s in batch:
            seq = s.seq
            ids.extend(seq.token_ids[s.start : s.end])
            table = seq.block_table
            if s.num_tokens == 1:
                slots.append(table[s.start // bs] * bs + s.start % bs)
            else:
                slots.extend(self.pool.slot_ids(table, s.start, s.end))
            linear.extend(range(s.start + seq.mrope_delta, s.end + seq.mrope_delta))
            if seq.prompt_positions is not None and s.start < seq.num_prompt_tokens:
                grid_parts.append(
                    (offset, seq.prompt_positions[:, s.start : min(s.end, seq.num_prompt_tokens)])
                )
            for img in seq.images:
                lo, hi = max(s.start, img.start), min(s.end, img.end)
                if lo < hi:
                    image_rows.append(img.embeds[lo - img.start : hi - img.start])
                    deepstack_rows.append(img.deepstack[:, lo - img.start : hi - img.start])
                    image_index.append(torch.arange(lo - s.start, hi - s.start) + offset)
            offset += s.num_tokens
            if s.end == seq.num_tokens:
                sample_rows.append(offset - 1)
                sampling.append(s)

        pos = long_tensor(linear, dev).expand(3, -1)  # [3, T]
        if grid_parts:
            pos = pos.clone()
            for off, part in grid_parts:
                pos[:, off : off + part.shape[1]] = part
        lm = self.model.model
        assert lm is not None
        embeds = lm.embed_tokens(long_tensor(ids, dev))  # [T, H]
        deepstack = None
        if image_rows:
            index = torch.cat(image_index).to(dev)  # [N]
            embeds.index_copy_(0, index, torch.cat(image_rows).to(device=dev, dtype=embeds.dtype))
            deepstack = DeepstackInput(index, torch.cat(deepstack_rows, dim=1).to(dev))  # [S, N, H]
        attn = self.attention(
            self.pool,
            [s.num_tokens for s in batch],
            [s.end for s in batch],
            [s.seq.block_table for s in batch],
            long_tensor(slots, dev),
            self.scale,
        )
        hidden = self.model(embeds, pos, attn, deepstack)  # [T, H]
        if not sampling:
            return sampling, None
        if len(sample_rows) < len(ids):
            hidden = hidden[long_tensor(sample_rows, dev)]
        return sampling, self.model.compute_logits(hidden)  # [R, V]

    @staticmethod
    def decode_only(batch: list[ScheduledSeq]) -> bool:
        """Every entry computes its last token, a generated one: no images, no prompt positions, and
        every row samples (a one-token chunk of a recomputation, not yet the last, does not)."""
        return all(
            s.num_tokens == 1 and s.start >= s.seq.num_prompt_tokens and s.end == s.seq.num_tokens
            for s in batch
        )

    def _run_decode(self, batch: list[ScheduledSeq]) -> torch.Tensor:
        """The packing of ``run`` for a batch of decodes only, without its per-sequence branches: the
        step that repeats most often. Gives the same inputs, hence the same logits."""
        dev, bs = self.device, self.pool.block_size
        ids, slots, positions, tables, lengths = [], [], [], [], []
        for s in batch:
            seq, i = s.seq, s.start
            table = seq.block_table
            ids.append(seq.token_ids[i])
            slots.append(table[i // bs] * bs + i % bs)
            positions.append(i + seq.mrope_delta)
            tables.append(table)
            lengths.append(i + 1)
        attn = (
            self._cpu_decode_attention(tables, lengths, long_tensor(slots, dev))
            if self.cpu_decode
            else self.attention(
                self.pool, [1] * len(batch), lengths, tables, long_tensor(slots, dev), self.scale
            )
        )
        pos = long_tensor(positions, dev).expand(3, -1)  # [3, T]
        lm = self.model.model
        assert lm is not None
        hidden = self.model(lm.embed_tokens(long_tensor(ids, dev)), pos, attn, None)  # [T, H]
        return self.model.compute_logits(hidden)  # [T, V]

    def _cpu_decode_attention(
        self, tables: list[list[int]], lengths: list[int], slots: torch.Tensor
    ) -> CpuDecodeAttention:
        bs = self.pool.block_size
        used = [-(-n // bs) for n in lengths]
        width = max(used)
        flat = [b for table, u in zip(tables, used, strict=True) for b in (*table[:u], *[0] * (width - u))]
        meta = torch.tensor(
            [[u, table[u - 1], (n - 1) % bs] for table, u, n in zip(tables, used, lengths, strict=True)],
            dtype=torch.int32,
        )  # [B, 3]: blocks in use, last block, offset of the newest token in it
        return CpuDecodeAttention(
            self.pool,
            slots,
            torch.tensor(flat, dtype=torch.int32).view(len(lengths), width),
            meta[:, 0],
            meta[:, 1],
            meta[:, 2],
            self.scale,
        )
