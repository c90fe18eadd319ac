"""One forward pass over a scheduled batch: pack inputs, run the model, return logits to sample.

Owns the model and the KV pool's tensors during a step. ``run`` packs the new tokens of every
scheduled sequence end to end, with their MRoPE positions, their image rows (the image
embeddings replace the token embeddings at image positions) and the deepstack rows of the images
that fall in this step's chunk (so an image split by a chunk boundary contributes exactly the rows
of each part); it builds the ``PagedAttention`` backend from the block tables, runs the model and
computes logits only for sequences whose last token was computed (the ones that sample).

Shape legend: T packed tokens, H hidden, N image tokens in the batch, S deepstack levels, R rows
that sample, V vocabulary.
"""

from __future__ import annotations

import torch

from shared.engine.kv_pool import KVPool
from shared.engine.paged_attention import PagedAttention
from shared.engine.scheduler import ScheduledSeq
from shared.models.language import DeepstackInput
from shared.models.qwen3_vl_moe import Qwen3VLMoeForConditionalGeneration


class ModelRunner:
    def __init__(self, model: Qwen3VLMoeForConditionalGeneration, pool: KVPool) -> None:
        if model.model is None:
            raise ValueError("the engine needs a model loaded with its language part")
        self.model = model
        self.pool = pool
        self.device = pool.device
        self.scale = model.config.text.head_dim**-0.5

    @torch.inference_mode()
    def run(self, batch: list[ScheduledSeq]) -> tuple[list[ScheduledSeq], torch.Tensor | None]:
        """Compute the batch; returns the entries that sample and their logits [R, V]."""
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

        pos = torch.tensor(linear, device=dev).expand(3, -1)  # [3, T]
        if grid_parts:
            pos = pos.clone()
            for off, part in grid_parts:
                pos[:, off : off + part.shape[1]] = part
        lm = self.model.model
        assert lm is not None
        embeds = lm.embed_tokens(torch.tensor(ids, device=dev))  # [T, H]
        deepstack = None
        if image_rows:
            index = torch.cat(image_index).to(dev)  # [N]
            embeds.index_copy_(0, index, torch.cat(image_rows).to(device=dev, dtype=embeds.dtype))
            deepstack = DeepstackInput(index, torch.cat(deepstack_rows, dim=1).to(dev))  # [S, N, H]
        attn = PagedAttention(
            self.pool,
            [s.num_tokens for s in batch],
            [s.end for s in batch],
            [s.seq.block_table for s in batch],
            torch.tensor(slots, device=dev),
            self.scale,
        )
        hidden = self.model(embeds, pos, attn, deepstack)  # [T, H]
        if not sampling:
            return sampling, None
        return sampling, self.model.compute_logits(hidden[torch.tensor(sample_rows, device=dev)])  # [R, V]
