"""What a sequence is when it leaves one engine for another: its state plus its KV.

Prefill ships, decode receives: ``SequenceState`` (tokens, sampling parameters, MRoPE delta) and
the KV of every token but the last one, either as one ``SequenceKV`` (``[L, Hkv, D]`` per layer)
or layer by layer. No generator state travels: a seeded request's randomness is its seed and the
count of its sampled tokens (``shared.engine.sampler``), both in the state already. The receiving
engine never recomputes such a sequence (it has no image features): under memory pressure it
swaps the KV out to host memory and back in.

Shape legend: L tokens with KV (all tokens but the last), Hkv KV heads, D head dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shared.engine.request import SamplingParams
from shared.engine.sequence import Sequence
from shared.models.layers.attention import SequenceKV


@dataclass
class SequenceState:
    request_id: str
    token_ids: list[int]  # prompt then generated tokens; the last one is not in the KV yet
    num_prompt_tokens: int
    mrope_delta: int
    params: SamplingParams

    @property
    def num_kv_tokens(self) -> int:
        return len(self.token_ids) - 1

    @classmethod
    def of(cls, seq: Sequence) -> SequenceState:
        return cls(
            seq.request_id,
            list(seq.token_ids),
            seq.num_prompt_tokens,
            seq.mrope_delta,
            seq.params,
        )

    def to_sequence(self, arrival: int, device: torch.device) -> Sequence:
        """The sequence of a whole import: KV for every token but the last, a sampled one."""
        if len(self.token_ids) <= self.num_prompt_tokens:
            raise ValueError(f"sequence {self.request_id}: no sampled token to continue from")
        seq = self.pending_sequence(arrival, device)
        seq.num_computed_tokens = self.num_kv_tokens
        return seq

    def pending_sequence(self, arrival: int, device: torch.device) -> Sequence:
        """The sequence of a layer-by-layer import: the KV of every token in ``token_ids`` is on its
        way; the engine appends the sampled token(s) when it is complete (``Engine.finish_import``)."""
        seq = Sequence(
            self.request_id,
            list(self.token_ids),
            self.num_prompt_tokens,
            self.params,
            arrival,
            mrope_delta=self.mrope_delta,
            recomputable=False,
        )
        if self.params.seed is not None:
            seq.generator = torch.Generator(device)
        seq.num_computed_tokens = len(self.token_ids)
        return seq


def check_kv(kv: SequenceKV, length: int, num_layers: int, num_kv_heads: int, head_dim: int) -> None:
    """Raise ValueError unless ``kv`` holds [length, Hkv, D] keys and values for every layer."""
    if len(kv.keys) != num_layers:
        raise ValueError(f"KV has {len(kv.keys)} layers, the model {num_layers}")
    for layer, (k, v) in enumerate(zip(kv.keys, kv.values, strict=True)):
        check_layer(layer, k, v, length, num_kv_heads, head_dim)


def check_layer(
    layer: int, k: torch.Tensor | None, v: torch.Tensor | None, length: int, num_kv_heads: int, head_dim: int
) -> None:
    want = (length, num_kv_heads, head_dim)
    if k is None or v is None or tuple(k.shape) != want or tuple(v.shape) != want:
        got = None if k is None else tuple(k.shape)
        raise ValueError(f"layer {layer}: KV of shape {got}, expected {want}")
