"""The engine core shared by the prefill and decode services: requests in, tokens out.

Life cycle of a request:

1. ``add_request`` validates it (image spans, shapes, fits the pool on its own) and queues a
   ``Sequence`` (WAITING).
2. Each ``step()`` is schedule -> run -> postprocess. The scheduler admits it (taking any cached
   prefix of its prompt) and hands out prompt chunks until the prompt is computed; the runner
   writes its K/V into its blocks; after the step its full prompt blocks join the prefix cache.
   When its last token has been computed, the sampler picks the next token, and from then on it
   decodes one token per step. Under memory pressure it may be preempted back to WAITING and
   recomputed later.
3. It finishes on a stop token, the model's EOS (unless ``ignore_eos``), ``max_tokens`` or
   ``max_model_len``: its blocks are freed and the last ``TokenOutput`` carries the reason. A
   ``prefill_only`` request finishes after its first token but keeps its blocks, so that its
   state and KV can be exported (``export_state`` / ``export_kv`` / ``export_kv_layer``), until
   ``release``. ``abort`` ends a request in any state and frees all it holds.

The receiving side imports a sequence either whole (``import_sequence``: queued, written into the
pool when blocks are free) or layer by layer (``begin_import``, ``import_kv_layer``,
``finish_import``); it then decodes like any other sequence.

Not thread-safe: one thread (the service's loop) calls every method, between steps.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable

import torch

from shared.engine.block_manager import BlockManager
from shared.engine.compiler_check import missing_compiler
from shared.engine.config import EngineConfig
from shared.engine.cpu_kernels import auto_reason, decode_kernel
from shared.engine.decode_graph import DecodeGraph
from shared.engine.guided import GuideError, Guides
from shared.engine.kv_pool import KVPool
from shared.engine.kv_transfer import SequenceState, check_kv, check_layer
from shared.engine.memory import plan_kv_blocks, profile_forward
from shared.engine.model_runner import ModelRunner
from shared.engine.moe_kernels import install_kernel, select_kernel
from shared.engine.request import FinishReason, Request, SamplingParams, TokenOutput
from shared.engine.sampler import Sampler
from shared.engine.scheduler import Scheduler
from shared.engine.sequence import Sequence, Status
from shared.models.config import TextConfig
from shared.models.layers.attention import SequenceKV
from shared.models.qwen3_vl_moe import Qwen3VLMoeForConditionalGeneration

log = logging.getLogger(__name__)


class Engine:
    def __init__(
        self, model: Qwen3VLMoeForConditionalGeneration, config: EngineConfig | None = None,
        guides: Guides | None = None,
    ) -> None:  # fmt: skip
        """``guides``: the checkpoint's vocabulary for guided requests (``shared.engine.guided``);
        None: a guided request is refused (``add_request`` raises)."""
        self.config = config = config or EngineConfig()
        self.guides = guides
        self.model_config = model.config
        text = model.config.text
        weight = next(model.parameters())
        self.device, dtype = weight.device, weight.dtype
        experts = (text.hidden_size, text.moe_intermediate_size)
        kernel = select_kernel(config.moe_kernel, self.device, dtype, experts)
        install_kernel(model, kernel)  # before the profiling forward: profiled with it
        profile = None if self.device.type == "cpu" else lambda: profile_forward(model, config)
        self.kv_plan = plan_kv_blocks(config, text, dtype, self.device, profile)
        num_blocks = self.kv_plan.num_blocks
        # One block more than the allocator hands out: the sink that padded rows of a compiled step write to.
        self.pool = KVPool(
            text.num_hidden_layers, num_blocks + 1, config.block_size, text.num_key_value_heads,
            text.head_dim, dtype, self.device,
        )  # fmt: skip
        self.blocks = BlockManager(num_blocks, config.block_size, config.enable_prefix_cache)
        self.scheduler = Scheduler(config, self.blocks, self.pool)
        attention = config.attention_for(self.device)
        if attention == "flex" and (reason := missing_compiler(self.device)):
            if config.attention_backend == "flex":
                raise ValueError(f"--attention-backend flex compiles FlexAttention, but {reason}")
            log.warning("paged attention: gather instead of flex, %s", reason)
            attention = "gather"
        if attention == "cpu":
            attention = self._cpu_attention(config, text)
        graph = (
            DecodeGraph(model, self.pool, config.max_num_seqs, attention) if config.compile_decode else None
        )
        if graph is not None:
            graph.compile()  # before serving; if it fails, decode steps stay eager (logged)
        self.runner = ModelRunner(model, self.pool, graph, attention)
        self.eos_token_ids = frozenset(model.config.eos_token_ids)
        self.sampler = Sampler(
            config.seed, self.device, c_argmax=attention == "cpu", eos_token_ids=self.eos_token_ids
        )
        self.max_model_len = config.resolve_max_model_len(text)
        self.vision_token_ids = frozenset((model.config.image_token_id, model.config.video_token_id))
        self.seqs: dict[str, Sequence] = {}  # every request the engine holds anything for
        self._importing: dict[str, Sequence] = {}  # layer-by-layer imports in progress
        self._imported_layers: dict[str, list[int]] = {}  # tokens stored so far, per layer
        self.on_preempt: Callable[[str], None] = lambda request_id: None
        self._arrivals = itertools.count()

    def _cpu_attention(self, config: EngineConfig, text: TextConfig) -> str:
        """``cpu`` where its C kernel runs here, else (``auto`` only) ``gather``, logged."""
        auto = config.attention_backend == "auto"
        if auto and (reason := auto_reason()):
            log.info("paged attention: gather, not the cpu kernel: %s", reason)
            return "gather"
        if self.device.type != "cpu":
            reason = f"the cpu kernel runs on CPUs, not {self.device.type}"
        else:
            group = text.num_attention_heads // text.num_key_value_heads
            reason = decode_kernel(text.head_dim, group, config.block_size)
        if reason is None:
            return "cpu"
        if not auto:
            raise ValueError(f"--attention-backend cpu: {reason}")
        log.warning("paged attention: gather instead of the cpu kernel, %s", reason)
        return "gather"

    # ----- requests ---------------------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        cfg = self.model_config
        request.validate(self.vision_token_ids, cfg.num_deepstack_levels, cfg.text.hidden_size)
        self._check_new(request.request_id, len(request.prompt_token_ids), request.params)
        seq = Sequence.from_request(request, next(self._arrivals), self.device)
        self.seqs[seq.request_id] = seq
        self.scheduler.add(seq)

    def guide_ready(self, guide: str) -> bool:
        """Whether a request guided by this expression ("": unguided) can be admitted without waiting
        for it to compile (which starts now, in the background, if it has not); ``GuideError`` (a
        ValueError) when it never can: no guided decoding here, or an expression that cannot guide."""
        if not guide:
            return True
        if self.guides is None:
            raise GuideError("guided decoding is not available in this engine")
        return self.guides.ready(guide)

    def _check_new(self, request_id: str, num_prompt_tokens: int, params: SamplingParams) -> None:
        max_tokens = params.max_tokens
        # A guide is compiled now (then cached): an expression that cannot guide is this request's error.
        if params.guide:
            if self.guides is None:
                raise GuideError(f"request {request_id}: guided decoding is not available in this engine")
            self.guides.index(params.guide)
        if request_id in self.seqs or request_id in self._importing:
            raise ValueError(f"request {request_id} is already in the engine")
        if num_prompt_tokens >= self.max_model_len:
            raise ValueError(
                f"request {request_id}: {num_prompt_tokens} prompt tokens >= {self.max_model_len}"
            )
        longest = min(num_prompt_tokens + max_tokens, self.max_model_len)
        if self.blocks.blocks_for(longest) > self.blocks.num_blocks:
            raise ValueError(
                f"request {request_id}: {longest} tokens need more than the pool's {self.blocks.num_blocks} blocks"
            )

    def abort(self, request_id: str) -> bool:
        """End the request wherever it is and free all it holds; False if the engine has no such request."""
        importing = self._importing.pop(request_id, None)  # holds blocks, in no scheduler queue yet
        seq = self.seqs.pop(request_id, None) or importing
        if seq is None:
            return False
        self._imported_layers.pop(request_id, None)
        if seq is importing:
            seq.status = Status.FINISHED
            self.blocks.free(seq)
        else:
            self.scheduler.abort(seq)
        seq.finish_reason = seq.finish_reason or FinishReason.ABORT
        return True

    def release(self, request_id: str) -> None:
        """Free a finished ``prefill_only`` request's blocks (after its KV was exported)."""
        seq = self.seqs.get(request_id)
        if seq is None or seq.status is not Status.FINISHED:
            raise KeyError(f"no finished request {request_id} holds KV")
        self.abort(request_id)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work()

    @property
    def num_free_blocks(self) -> int:
        return self.blocks.num_free_blocks

    # ----- the loop ---------------------------------------------------------------------------------
    def step(self) -> list[TokenOutput]:
        batch = self.scheduler.schedule()
        for seq in batch.preempted:  # before the forward reuses their blocks
            self.on_preempt(seq.request_id)
        if not batch:
            return []
        sampling, logits = self.runner.run(batch.scheduled)
        for s in batch.scheduled:
            s.seq.num_computed_tokens = s.end
            self.blocks.register(s.seq)
        if logits is None:
            return []
        seqs = [s.seq for s in sampling]
        sampled = self.sampler(
            logits,
            [s.params for s in seqs],
            [s.generator for s in seqs],
            [s.num_output_tokens + s.params.draw_offset for s in seqs],
            [s.token_history(self.device) for s in seqs] if any(s.params.penalized for s in seqs) else None,
            [s.guide_state(self.guides) for s in seqs] if any(s.params.guide for s in seqs) else None,
            [s.recent_output(s.params.bad_words_reach) for s in seqs]
            if any(s.params.bad_words for s in seqs)
            else None,
        )
        outputs = []
        for i, seq in enumerate(seqs):
            token = sampled.token_ids[i]
            seq.token_ids.append(token)
            reason = self._stop_reason(seq, token)
            outputs.append(
                TokenOutput(
                    seq.request_id,
                    token,
                    sampled.logprobs[i],
                    sampled.top_logprobs[i],
                    reason,
                    seq.num_output_tokens - 1,
                )
            )
            if reason is not None:
                seq.finish_reason = reason
                self.scheduler.finish(seq, keep_blocks=seq.prefill_only)
                if not seq.prefill_only:
                    del self.seqs[seq.request_id]
        return outputs

    def _stop_reason(self, seq: Sequence, token: int) -> FinishReason | None:
        p = seq.params
        if seq.guide is not None and token == seq.guide.eos_token_id:
            return FinishReason.STOP  # the guide allowed it: the answer is complete, ignore_eos or not
        if seq.num_output_tokens + p.draw_offset > p.min_tokens and (
            token in p.stop_token_ids or (not p.ignore_eos and token in self.eos_token_ids)
        ):
            return FinishReason.STOP
        if seq.num_output_tokens >= p.max_tokens or seq.num_tokens >= self.max_model_len:
            return FinishReason.LENGTH
        return FinishReason.PREFILLED if seq.prefill_only else None

    def generate(self, requests: Iterable[Request]) -> dict[str, list[int]]:
        """Add the requests and step until nothing is left; the tokens of every request that ran."""
        results: dict[str, list[int]] = {}
        for r in requests:
            self.add_request(r)
            results[r.request_id] = []
        while self.has_unfinished():
            for out in self.step():
                results.setdefault(out.request_id, []).append(out.token_id)
        return results

    # ----- export ------------------------------------------------------------------------------------
    def _resident(self, request_id: str) -> Sequence:
        seq = self.seqs.get(request_id)
        if seq is None or not seq.block_table or seq.num_uncomputed_tokens != 1:
            raise KeyError(f"request {request_id} has no exportable KV (unknown, waiting or mid-prefill)")
        return seq

    def kv_bytes(self, num_tokens: int) -> int:
        """Bytes of K and V, all layers, of ``num_tokens`` tokens."""
        k = self.pool.k
        return 2 * num_tokens * k.shape[0] * k.shape[3] * k.shape[4] * k.element_size()

    def kv_progress(self, request_id: str) -> tuple[list[int], int]:
        """The block table of a request being prefilled (or prefilled) and how many of its prompt
        tokens have KV in those blocks now; no blocks and 0 while it waits (preempted ones too)."""
        seq = self.seqs.get(request_id)
        if seq is None:
            raise KeyError(f"no request {request_id}")
        if seq.status is Status.WAITING:
            return [], 0
        return seq.block_table, min(seq.num_computed_tokens, seq.num_prompt_tokens)

    def prompt_state(self, request_id: str) -> SequenceState:
        """The state of a request being prefilled, as far as its prompt (no sampled token yet)."""
        seq = self.seqs.get(request_id)
        if seq is None:
            raise KeyError(f"no request {request_id}")
        state = SequenceState.of(seq)
        state.token_ids = state.token_ids[: seq.num_prompt_tokens]
        return state

    def export_state(self, request_id: str) -> SequenceState:
        return SequenceState.of(self._resident(request_id))

    def export_kv(self, request_id: str) -> SequenceKV:
        seq = self._resident(request_id)
        return self.pool.read(seq.block_table, seq.num_computed_tokens)

    def export_kv_layer(self, request_id: str, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        seq = self._resident(request_id)
        return self.pool.read_layer(seq.block_table, seq.num_computed_tokens, layer)

    # ----- import ------------------------------------------------------------------------------------
    def _new_import(self, state: SequenceState) -> Sequence:
        self._check_new(state.request_id, state.num_prompt_tokens, state.params)
        return state.to_sequence(next(self._arrivals), self.device)

    def import_sequence(self, state: SequenceState, kv: SequenceKV) -> None:
        """Queue a sequence with all its KV; it joins the running batch when blocks are free."""
        text = self.model_config.text
        check_kv(kv, state.num_kv_tokens, text.num_hidden_layers, text.num_key_value_heads, text.head_dim)
        seq = self._new_import(state)
        seq.host_kv = kv
        self.seqs[seq.request_id] = seq
        self.scheduler.add(seq)

    def begin_import(self, state: SequenceState) -> list[int] | None:
        """Reserve blocks for a sequence whose KV, of every token in ``state``, arrives later (layer by
        layer, or written into the blocks by a transfer engine), with room for the token sampled after
        them. Returns the reserved block ids in order, or None while the pool is full."""
        self._check_new(state.request_id, state.num_prompt_tokens, state.params)
        seq = state.pending_sequence(next(self._arrivals), self.device)
        if not self.blocks.can_grow(seq, seq.num_tokens + 1):
            return None
        self.blocks.grow(seq, seq.num_tokens + 1)
        self._importing[seq.request_id] = seq
        self._imported_layers[seq.request_id] = [0] * self.model_config.text.num_hidden_layers
        return list(seq.block_table)

    def import_kv_layer(
        self, request_id: str, layer: int, k: torch.Tensor, v: torch.Tensor, start: int = 0
    ) -> None:
        """Store one layer's K, V ``[n, Hkv, D]`` of tokens ``[start, start + n)``; a layer's tokens
        arrive in order, so ``start`` is where its previous piece ended."""
        seq = self._importing[request_id]
        text = self.model_config.text
        if not 0 <= layer < text.num_hidden_layers:
            raise ValueError(f"layer {layer} out of range")
        have = self._imported_layers[request_id][layer]
        if start != have:
            raise ValueError(f"layer {layer}: tokens from {start} arrived, {have} expected next")
        n = k.shape[0] if k.dim() == 3 else -1
        if not 0 < n <= seq.num_computed_tokens - start:
            raise ValueError(
                f"layer {layer}: {n} tokens from {start} overrun the {seq.num_computed_tokens} reserved"
            )
        check_layer(layer, k, v, n, text.num_key_value_heads, text.head_dim)
        self.pool.write_layer(seq.block_table, layer, k, v, start)
        self._imported_layers[request_id][layer] = start + n

    def finish_import(self, request_id: str, sampled: list[int], written: bool = False) -> None:
        """The KV is complete: the sequence continues from ``sampled`` (the token(s) prefill sampled)
        and joins the queue, holding its blocks. ``written``: a transfer engine wrote the blocks
        itself, so no layer went through ``import_kv_layer``."""
        seq = self._importing[request_id]
        if not written:
            have = self._imported_layers[request_id]
            missing = [i for i, n in enumerate(have) if n != seq.num_computed_tokens]
            if missing:
                raise ValueError(f"request {request_id}: layers {missing} incomplete")
        if not sampled:
            raise ValueError(f"request {request_id}: no sampled token to continue from")
        seq.token_ids.extend(sampled)
        if not self.blocks.can_grow(seq, seq.num_tokens):
            raise ValueError(f"request {request_id}: no room for {len(sampled)} sampled tokens")
        self.blocks.grow(seq, seq.num_tokens)
        seq.num_computed_tokens = seq.num_tokens - 1
        del self._importing[request_id], self._imported_layers[request_id]
        self.seqs[request_id] = seq
        self.scheduler.add(seq)
