"""The Qwen3 (MoE) base language model, with deepstack as a feature of the base model.

``Qwen3MoeModel`` runs a packed batch: the new tokens of several sequences laid end to end, each
with its three MRoPE position ids. The same call serves a prefill chunk (many new tokens per
sequence) and a decode step (one per sequence); the ``AttentionBackend`` knows which is which and
where the cached K/V live. Deepstack: after decoder layer ``i`` (for ``i`` below the number of
deepstack levels) the ``i``-th deepstack embedding is added to the hidden states at the image
tokens' positions, which is how the vision tower's intermediate features enter the language model.
Dense Qwen3-VL uses the same class: with no experts every layer gets a plain gated MLP.

Shape legend: T packed tokens, H hidden, N image tokens in the batch, S deepstack levels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from shared.models.config import TextConfig
from shared.models.layers.attention import AttentionBackend
from shared.models.layers.mlp import GatedMLP
from shared.models.layers.moe import SparseMoeBlock
from shared.models.layers.norm import RMSNorm
from shared.models.layers.rotary import MRoPE, apply_rotary


@dataclass
class DeepstackInput:
    """Deepstack embeddings for the image tokens of one packed batch."""

    index: torch.Tensor  # [N] positions in the packed batch that hold image tokens
    embeds: torch.Tensor  # [S, N, H]

    def __post_init__(self) -> None:
        if self.embeds.dim() != 3 or self.embeds.shape[1] != self.index.numel():
            raise ValueError(
                f"deepstack embeds {tuple(self.embeds.shape)} do not match {self.index.numel()} image positions"
            )


class Attention(nn.Module):
    """GQA with per-head RMSNorm on q and k (QK-norm) before the rotary embedding."""

    def __init__(self, cfg: TextConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        bias = cfg.attention_bias
        self.q_proj = nn.Linear(cfg.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=bias)
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn: AttentionBackend
    ) -> torch.Tensor:
        t = x.shape[0]
        q = self.q_norm(self.q_proj(x).view(t, self.num_heads, self.head_dim))  # [T, Hq, D]
        k = self.k_norm(self.k_proj(x).view(t, self.num_kv_heads, self.head_dim))  # [T, Hkv, D]
        v = self.v_proj(x).view(t, self.num_kv_heads, self.head_dim)
        q, k = apply_rotary(q, k, cos, sin)
        out = attn.forward(self.layer_idx, q, k, v)  # [T, Hq, D]
        return self.o_proj(out.reshape(t, -1))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = Attention(cfg, layer_idx)
        if cfg.is_moe_layer(layer_idx):
            self.mlp: nn.Module = SparseMoeBlock(
                cfg.hidden_size, cfg.num_experts, cfg.num_experts_per_tok, cfg.moe_intermediate_size
            )
        else:
            self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn: AttentionBackend
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen3MoeModel(nn.Module):
    """Embeddings, decoder layers and final norm; checkpoint prefix ``model.language_model``."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rope = MRoPE(cfg.head_dim, cfg.rope_theta, cfg.mrope_section)

    def forward(
        self,
        inputs_embeds: torch.Tensor,  # [T, H]
        positions: torch.Tensor,  # [3, T]
        attn: AttentionBackend,
        deepstack: DeepstackInput | None = None,
    ) -> torch.Tensor:
        cos, sin = self.rope(positions, inputs_embeds.dtype)
        h = inputs_embeds
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, attn)
            if deepstack is not None and i < deepstack.embeds.shape[0]:
                h = h.index_add(0, deepstack.index, deepstack.embeds[i].to(h.dtype))
        return self.norm(h)  # [T, H]
