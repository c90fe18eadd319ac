"""One attempt of a job as the orchestrator tracks it (``Live``: its workers, its token counts and
the order of its token records), and an attempt waiting for a usable worker (``Parked``).

Token order: an attempt's first token comes from prefill, the rest from decode, two senders into
one inbox, so decode's records can arrive before prefill's. Each record carries the place of its
first token among the attempt's outputs (``SequenceTokens.index``); ``Live.in_turn`` holds those
that come early (at most ``MAX_HELD``), drops stale duplicates and hands back what is due, in order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from router.jobs import Job
from router.workers import Decode, Prefill
from shared.wire.messages import SequenceTokens

MAX_HELD = 4096  # token records of one attempt held for their turn


@dataclass
class Live:
    job: Job
    wire_id: str
    attempt: int
    prefill: Prefill
    decode: Decode
    encoders: dict[str, list[int]]  # encoder address -> image indexes it was given
    submitted: float = field(default_factory=time.monotonic)
    first: float = 0.0
    last: float = 0.0
    tokens: int = 0
    tried: set[str] = field(default_factory=set)  # worker addresses that failed this job
    prefill_done: bool = False
    resumed: int = 0  # tokens streamed before this attempt (a migration)
    decoding: bool = False  # decode produced a token of this attempt: it holds the KV, prefill is done
    next_index: int = 0  # of the attempt's next output token to stream
    held: dict[int, SequenceTokens] = field(default_factory=dict)  # records that came before their turn

    def in_turn(self, rec: SequenceTokens) -> list[SequenceTokens] | None:
        """The records due now, in order: ``rec`` and those held behind it; [] when ``rec`` came
        early (held) or is a stale duplicate; None when too many came early."""
        self.decoding = self.decoding or rec.index > 0
        if rec.index < self.next_index:
            return []
        if rec.index > self.next_index:
            if len(self.held) >= MAX_HELD:
                return None
            self.held[rec.index] = rec
            return []
        due: list[SequenceTokens] = []
        turn: SequenceTokens | None = rec
        while turn is not None:
            due.append(turn)
            self.next_index += len(turn.token_ids)
            turn = self.held.pop(self.next_index, None)
        return due


@dataclass
class Parked:
    job: Job
    attempt: int
    tried: set[str]
    until: float  # monotonic: no worker by then -> overloaded
