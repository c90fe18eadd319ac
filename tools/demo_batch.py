"""Training batches for the demo model: several chats packed end to end, and their loss.

A chat becomes exactly the prompt the serving path builds (``PromptBuilder`` with the checkpoint's
chat template, image placeholders expanded, MRoPE positions), with the whole conversation rendered
(``add_generation_prompt=False``). The loss covers only the assistants' answers and the
``<|im_end|>`` that closes each: the tokens after ``<|im_start|>assistant\\n`` up to and including
``<|im_end|>``. The forward pass is the model's own: ``model.visual`` (not ``get_image_feature``,
which runs under ``torch.inference_mode``), ``model.embed``, the language model over a packed
batch with a fresh ``ContiguousAttention`` per step (causal per chat, exact), and ``lm_head`` on
the rows that predict answer tokens only.

Shape legend: T packed tokens, N image patches, M image tokens, L answer tokens, H hidden.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from shared.models.language import DeepstackInput
from shared.models.layers.attention import ContiguousAttention, SequenceKV
from shared.models.layers.moe import TopKRouter
from shared.models.qwen3_vl_moe import Qwen3VLMoeForConditionalGeneration
from shared.multimodal.mrope import mrope_positions
from shared.multimodal.prompt import PromptBuilder
from shared.multimodal.vision_inputs import ImageProcessorConfig, preprocess_image
from tools.demo_data import Chat
from tools.demo_probe import VisionProbe, scene_token_labels


@dataclass
class Batch:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [3, T]
    seq_lens: list[int]
    pixel_values: torch.Tensor | None  # [N, C*T*P*P] of the distinct pictures
    grids: list[tuple[int, int, int]]  # of the distinct pictures
    image_order: list[int]  # the distinct picture behind each picture of the packed prompts
    token_labels: (
        torch.Tensor | None
    )  # [M, 4] per image token of the distinct pictures, see scene_token_labels
    target_rows: torch.Tensor  # [L] packed rows whose output predicts ...
    targets: torch.Tensor  # [L] ... these token ids


def answer_rows(ids: list[int], im_start: int, im_end: int, assistant: list[int]) -> list[int]:
    """Indices of the answer tokens (and each closing ``<|im_end|>``) in one rendered chat."""
    rows, n, i = [], len(assistant), 0
    while i < len(ids):
        if ids[i] == im_start and ids[i + 1 : i + 1 + n] == assistant:
            j = i + 1 + n
            while ids[j] != im_end:
                j += 1
            rows.extend(range(i + 1 + n, j + 1))
            i = j
        i += 1
    return rows


class Batcher:
    """Turns chats into packed ``Batch``es with one checkpoint's tokenizer and preprocessing."""

    def __init__(self, builder: PromptBuilder, processor: ImageProcessorConfig, image_token_id: int) -> None:
        self.builder = builder
        self.processor = processor
        self.image_token_id = image_token_id
        tok = builder.tokenizer
        self.im_start = tok.convert_tokens_to_ids("<|im_start|>")
        self.im_end = tok.convert_tokens_to_ids("<|im_end|>")
        self.assistant = tok("assistant\n", add_special_tokens=False)["input_ids"]

    def __call__(self, chats: list[Chat]) -> Batch:
        """Pack ``chats``; chats that hold the same picture objects share their preprocessing and
        vision-tower pass."""
        ids, positions, lens, pixels, grids, rows, order = [], [], [], [], [], [], []
        seen: dict[int, int] = {}
        labels, scenes = [], []
        for chat in chats:
            for img, scene in zip(chat.images, chat.scenes, strict=True):
                if id(img) not in seen:
                    seen[id(img)] = len(pixels)
                    patches, grid = preprocess_image(img, self.processor)
                    pixels.append(patches)
                    grids.append(grid)
                    shapes_before = sum(len(s.shapes) for s in scenes)
                    scenes.append(scene)
                    labels.append(scene_token_labels(scene, grid, self.processor.merge_size, shapes_before))
                order.append(seen[id(img)])
            chat_grids = [grids[seen[id(img)]] for img in chat.images]
            prompt = self.builder.build(chat.messages(), chat_grids, add_generation_prompt=False)
            pos, _ = mrope_positions(
                prompt.input_ids, chat_grids, self.image_token_id, self.processor.merge_size
            )
            offset = sum(lens)
            rows += [
                offset + r for r in answer_rows(prompt.input_ids, self.im_start, self.im_end, self.assistant)
            ]
            ids += prompt.input_ids
            positions.append(pos)
            lens.append(len(prompt.input_ids))
        input_ids = torch.tensor(ids)
        target_rows = torch.tensor(rows)
        return Batch(
            input_ids=input_ids,
            positions=torch.cat(positions, dim=1),
            seq_lens=lens,
            pixel_values=torch.cat(pixels) if pixels else None,
            grids=grids,
            image_order=order,
            token_labels=torch.cat(labels) if labels else None,
            target_rows=target_rows - 1,
            targets=input_ids[target_rows],
        )


class RouterBalance:
    """Switch-style load-balancing loss of every MoE router, gathered by forward hooks:
    ``E * sum_e(fraction of routed slots on e * mean router probability of e)``, 1.0 when even."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.losses: list[torch.Tensor] = []
        for module in model.modules():
            if isinstance(module, TopKRouter):
                module.register_forward_hook(self._hook)

    def _hook(
        self, module: TopKRouter, inputs: tuple[torch.Tensor], output: tuple[torch.Tensor, torch.Tensor]
    ):
        probs = F.softmax(F.linear(inputs[0], module.weight), dim=-1, dtype=torch.float32)  # [T, E]
        num_experts = probs.shape[-1]
        _, ids = output
        load = torch.bincount(ids.flatten(), minlength=num_experts).float() / ids.numel()  # [E]
        self.losses.append(num_experts * (load * probs.mean(0)).sum())

    def pop(self) -> torch.Tensor:
        loss = torch.stack(self.losses).mean() if self.losses else torch.zeros(())
        self.losses = []
        return loss


def batch_loss(
    model: Qwen3VLMoeForConditionalGeneration, batch: Batch, probe: VisionProbe | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over the answer tokens of the batch, and the probe's loss (0 without)."""
    assert model.visual is not None and model.model is not None
    ids = batch.input_ids
    deepstack = None
    probe_loss = torch.zeros(())
    if batch.pixel_values is not None:
        merged, levels = model.visual(batch.pixel_values, batch.grids)  # [M, H], [S, M, H] distinct
        if probe is not None and batch.token_labels is not None:
            probe_loss = probe([merged, *levels.unbind(0)], batch.token_labels)
        unit = model.config.vision.merge_unit
        sizes = [t * h * w // unit for t, h, w in batch.grids]
        per_image = list(zip(merged.split(sizes), levels.split(sizes, dim=1), strict=True))
        merged = torch.cat([per_image[i][0] for i in batch.image_order])  # [M', H] in prompt order
        levels = torch.cat([per_image[i][1] for i in batch.image_order], dim=1)  # [S, M', H]
        embeds = model.embed(ids, merged)
        deepstack = DeepstackInput((ids == model.config.image_token_id).nonzero()[:, 0], levels)
    else:
        embeds = model.embed(ids)
    cfg = model.config.text
    caches = [SequenceKV(cfg.num_hidden_layers) for _ in batch.seq_lens]
    attn = ContiguousAttention(caches, batch.seq_lens, cfg.head_dim**-0.5)
    hidden = model(embeds, batch.positions, attn, deepstack)  # [T, H]
    logits = model.compute_logits(hidden[batch.target_rows])  # [L, V]
    return F.cross_entropy(logits, batch.targets), probe_loss
