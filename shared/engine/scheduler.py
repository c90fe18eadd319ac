"""Continuous batching: which sequences run in the next step, and how many tokens each.

Owns the waiting and running queues (both kept in arrival order). Each ``schedule()``:

1. Running sequences, oldest first. A decoding one gets its one token; a prefilling one gets the
   next chunk (at most ``prefill_chunk_size`` tokens, and never so many that a decode later in
   the queue would miss this step's budget). When the pool cannot hold the new tokens, the newest
   running sequence is preempted (possibly the one being scheduled): its blocks are freed and it
   goes back to the waiting queue, to be recomputed (or, when it cannot be, swapped back in).
2. Waiting sequences, oldest first, while the token budget, ``max_num_seqs`` and the pool allow.
   A sequence holding no blocks first takes the longest cached prefix of its prompt. Admission
   stops at the first sequence that does not fit, so a large request is never overtaken forever.

Oldest-first service and newest-first preemption are why nothing starves: the oldest running
sequence is never preempted while another runs, and every request was checked at admission to
fit the pool on its own. The engine reports finishes with ``finish`` and aborts with ``abort``;
both free everything the sequence holds.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from shared.engine.block_manager import BlockManager
from shared.engine.config import EngineConfig
from shared.engine.kv_pool import KVPool
from shared.engine.sequence import Sequence, Status


@dataclass
class ScheduledSeq:
    seq: Sequence
    start: int  # first token index computed this step
    num_tokens: int  # tokens computed this step

    @property
    def end(self) -> int:
        return self.start + self.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)

    def __bool__(self) -> bool:
        return bool(self.scheduled)


def _by_arrival(seq: Sequence) -> int:
    return seq.arrival


class Scheduler:
    def __init__(self, config: EngineConfig, blocks: BlockManager, pool: KVPool | None = None) -> None:
        self.config = config
        self.blocks = blocks
        self.pool = pool  # only for swapping sequences that cannot be recomputed
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self.num_prompt_tokens = 0  # statistics of admissions: prompt tokens, and of those cached
        self.num_cached_tokens = 0

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        seq.status = Status.WAITING
        bisect.insort(self.waiting, seq, key=_by_arrival)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        pending_decodes = sum(1 for s in self.running if s.num_uncomputed_tokens == 1)
        i = 0
        while i < len(self.running):
            seq = self.running[i]
            if seq.num_uncomputed_tokens == 1:
                n = 1
                pending_decodes -= 1
            else:
                n = min(seq.num_uncomputed_tokens, self.config.prefill_chunk_size, budget - pending_decodes)
                if n <= 0:
                    i += 1
                    continue
                # Take what the pool can give before preempting anyone for the rest of the chunk.
                room = (len(seq.block_table) + self.blocks.num_free_blocks) * self.blocks.block_size
                n = max(1, min(n, room - seq.num_computed_tokens))
            while not self.blocks.can_grow(seq, seq.num_computed_tokens + n):
                victim = self.running[-1]
                if victim is not seq and victim.num_uncomputed_tokens == 1:
                    pending_decodes -= 1
                self._preempt(victim, out)
                if victim is seq:
                    break
            if seq.status is not Status.RUNNING:
                continue  # it was the newest and gave its own blocks up; nothing follows it
            self.blocks.grow(seq, seq.num_computed_tokens + n)
            out.scheduled.append(ScheduledSeq(seq, seq.num_computed_tokens, n))
            budget -= n
            i += 1
        self._admit(out, budget)
        return out

    def _admit(self, out: SchedulerOutput, budget: int) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            if seq.host_kv is not None:
                n = seq.num_uncomputed_tokens
                if n > budget or not self.blocks.can_grow(seq, seq.num_tokens):
                    return
                self.blocks.grow(seq, seq.num_tokens)
                assert self.pool is not None, "a swapped sequence needs the pool"
                self.pool.write(seq.block_table, seq.host_kv)
                seq.host_kv = None
            else:
                fresh = not seq.block_table
                if fresh:
                    self.blocks.match_prefix(seq)
                n = min(seq.num_uncomputed_tokens, self.config.prefill_chunk_size, budget)
                if not self.blocks.can_grow(seq, seq.num_computed_tokens + n):
                    if fresh:  # give the matched prefix back; it stays cached for later
                        self.blocks.free(seq)
                        seq.num_computed_tokens = 0
                    return
                if fresh:
                    self.num_prompt_tokens += seq.num_prompt_tokens
                    self.num_cached_tokens += seq.num_cached_tokens
                self.blocks.grow(seq, seq.num_computed_tokens + n)
            self.waiting.pop(0)
            seq.status = Status.RUNNING
            bisect.insort(self.running, seq, key=_by_arrival)
            out.scheduled.append(ScheduledSeq(seq, seq.num_computed_tokens, n))
            budget -= n

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.running.remove(seq)
        if seq.recomputable:
            seq.num_computed_tokens = 0
        else:
            assert self.pool is not None, "a sequence that cannot be recomputed needs the pool to swap"
            seq.host_kv = self.pool.read_to_host(seq.block_table, seq.num_computed_tokens)
        self.blocks.free(seq)
        self.num_preemptions += 1
        out.preempted.append(seq)
        self.add(seq)

    def finish(self, seq: Sequence, keep_blocks: bool = False) -> None:
        """Take a finished sequence out of the running queue; free its blocks unless kept for export."""
        self.running.remove(seq)
        seq.status = Status.FINISHED
        if not keep_blocks:
            self.blocks.free(seq)

    def abort(self, seq: Sequence) -> None:
        """Remove the sequence wherever it is and free everything it holds."""
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
        elif seq.status is Status.WAITING:
            self.waiting.remove(seq)
        seq.status = Status.FINISHED
        seq.host_kv = None
        self.blocks.free(seq)
