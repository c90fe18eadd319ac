"""The engine's state of one request, from admission to finish.

Life cycle: WAITING (queued, or preempted) -> RUNNING (holds blocks; its prompt is computed in
one or more chunks, then it decodes one token per step) -> FINISHED. Preemption sends a RUNNING
sequence back to WAITING: a sequence built from a ``Request`` drops its KV and recomputes it
(prompt and generated tokens alike) when readmitted; one imported from another engine has no
image features to recompute with, so its KV is swapped out to host memory (``host_kv``) and
written back.

Invariant: the pool holds K/V for tokens ``[0, num_computed_tokens)``; the tokens after that are
fed to the model by later steps. A decoding sequence has exactly one such token (its last
sampled one).

Shape legend: T prompt tokens.
"""

from __future__ import annotations

from enum import Enum

import torch

from shared.engine.guided import GuideError, Guides, GuideState
from shared.engine.penalties import TokenHistory
from shared.engine.request import FinishReason, ImageInput, Request, SamplingParams
from shared.models.layers.attention import SequenceKV


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    def __init__(
        self,
        request_id: str,
        token_ids: list[int],
        num_prompt_tokens: int,
        params: SamplingParams,
        arrival: int,
        mrope_delta: int = 0,
        prompt_positions: torch.Tensor | None = None,  # [3, T]; None: a text prompt, 0 .. T-1
        images: list[ImageInput] | None = None,
        prefill_only: bool = False,
        recomputable: bool = True,
    ) -> None:
        self.request_id = request_id
        self.token_ids = token_ids
        self.num_prompt_tokens = num_prompt_tokens
        self.params = params
        self.arrival = arrival  # admission order: older sequences are served and kept first
        self.mrope_delta = mrope_delta
        self.prompt_positions = prompt_positions
        self.images = images or []
        self.prefill_only = prefill_only
        self.recomputable = recomputable
        self.generator: torch.Generator | None = None  # params.seed set: reseeded by the sampler per draw
        self.status = Status.WAITING
        self.finish_reason: FinishReason | None = None
        self.num_computed_tokens = 0
        self.block_table: list[int] = []
        self.block_hashes: list[bytes] | None = None  # prompt block hashes, filled on first admission
        self.num_registered_blocks = 0  # leading blocks already in the prefix cache
        self.num_cached_tokens = 0  # prompt tokens found in the prefix cache at the last admission
        self.host_kv: SequenceKV | None = None  # swapped-out or imported KV awaiting a slot
        self.history: TokenHistory | None = None  # a penalised sequence's, from its first sampling step
        self.guide: GuideState | None = None  # a guided sequence's, from its first sampling step

    def token_history(self, device: torch.device) -> TokenHistory | None:
        """What the penalties read of this sequence (None without penalties), up to date. A
        migrated request's prompt ends with the tokens earlier attempts sampled: output, for them."""
        if not self.params.penalized:
            return None
        if self.history is None:
            self.history = TokenHistory(
                self.token_ids, self.num_prompt_tokens - self.params.draw_offset, device
            )
        return self.history.sync()

    def recent_output(self, n: int) -> list[int]:
        """The last ``n`` tokens of the output (a migrated request's earlier tokens count as output)."""
        start = max(self.num_prompt_tokens - self.params.draw_offset, len(self.token_ids) - n)
        return self.token_ids[start:] if n else []

    def guide_state(self, guides: Guides | None) -> GuideState | None:
        """Where this sequence is in its guide's automaton (None when unguided), up to date; its
        guided tokens begin where its output does (a migrated request's, where the earlier attempt's)."""
        if not self.params.guide:
            return None
        if self.guide is None:
            if guides is None:
                raise GuideError("guided decoding is not available in this engine")
            self.guide = guides.state(self.params.guide, self.num_prompt_tokens - self.params.draw_offset)
        return self.guide.sync(self.token_ids)

    @classmethod
    def from_request(cls, req: Request, arrival: int, device: torch.device) -> Sequence:
        seq = cls(
            req.request_id,
            list(req.prompt_token_ids),
            len(req.prompt_token_ids),
            req.params,
            arrival,
            mrope_delta=req.mrope_delta,
            prompt_positions=req.positions,
            images=sorted(req.images, key=lambda i: i.start),
            prefill_only=req.prefill_only,
        )
        if req.params.seed is not None:
            seq.generator = torch.Generator(device)
        return seq

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_decoding(self) -> bool:
        return self.num_uncomputed_tokens == 1 and self.num_output_tokens > 0
