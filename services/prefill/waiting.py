"""Requests waiting for their image embeddings, and embeddings waiting for their request.

Encoders push embeddings straight to prefill, so they can arrive before the router's
``PrefillRequest`` (an "orphan": kept, bounded in bytes and time) or after it. A request is ready
when every image arrived and its guide (a structured output's automaton, compiled in the
background) is there, failed when any image or its guide failed, and expired past its deadline;
whatever it holds is freed when it leaves.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.timeline import RequestClock
from shared.wire import ImageEmbeddingResult, StageError
from shared.wire.assembly import ImageSet
from shared.wire.messages import PrefillRequest


@dataclass
class Waiting:
    msg: PrefillRequest
    images: ImageSet
    clock: RequestClock = field(default_factory=RequestClock.here)  # pinned on arrival
    problem: str = ""  # set when an embedding could not be accepted

    @property
    def done(self) -> bool:
        return self.images.done or bool(self.problem)


class WaitingRoom:
    def __init__(self, max_requests: int, max_orphan_bytes: int, orphan_ttl_s: float) -> None:
        self.max_requests = max_requests
        self.max_orphan_bytes = max_orphan_bytes
        self.orphan_ttl_s = orphan_ttl_s
        self.requests: dict[str, Waiting] = {}
        self.orphans: dict[str, list[tuple[float, ImageEmbeddingResult | StageError]]] = {}
        self.orphan_bytes = 0
        self.orphans_dropped = 0

    def __len__(self) -> int:
        return len(self.requests)

    def add_request(self, msg: PrefillRequest) -> Waiting:
        """Raises OverflowError when full, KeyError for a request id already waiting."""
        if msg.request_id in self.requests:
            raise KeyError(f"request {msg.request_id} is already waiting")
        if len(self.requests) >= self.max_requests:
            raise OverflowError(f"{len(self.requests)} requests already wait for embeddings")
        w = Waiting(msg, ImageSet(msg.request_id, len(msg.images)), RequestClock.received(msg.trace))
        self.requests[msg.request_id] = w
        for _, early in self.orphans.pop(msg.request_id, []):
            self.orphan_bytes -= _nbytes(early)
            self._add(w, early)
        return w

    def add_embedding(self, msg: ImageEmbeddingResult | StageError) -> None:
        assert msg.request_id is not None
        w = self.requests.get(msg.request_id)
        if w is not None:
            self._add(w, msg)
            return
        if self.orphan_bytes + _nbytes(msg) > self.max_orphan_bytes:
            self.orphans_dropped += 1  # its request will miss it and fail by its deadline
            return
        self.orphans.setdefault(msg.request_id, []).append((time.monotonic(), msg))
        self.orphan_bytes += _nbytes(msg)

    @staticmethod
    def _add(w: Waiting, msg: ImageEmbeddingResult | StageError) -> None:
        try:
            w.images.add(msg)
        except ValueError as e:
            w.problem = str(e)

    def pop_done(self, guide_ready: Callable[[str], bool] = lambda guide: True) -> list[Waiting]:
        """The requests done waiting (ready or failed). ``guide_ready(expression)``: whether a guided
        request's automaton is compiled (raising ValueError when it cannot be: the request fails)."""
        done = []
        for w in self.requests.values():
            if not w.done:
                continue
            guide = w.msg.sampling.guide
            if guide and not w.problem:
                try:
                    if not guide_ready(guide):
                        continue
                except ValueError as e:
                    w.problem = str(e)
            done.append(w)
        for w in done:
            del self.requests[w.msg.request_id]
        return done

    def expire(self) -> list[Waiting]:
        """Requests past their deadline (removed); orphans older than the TTL are dropped."""
        late = [w for w in self.requests.values() if w.clock.now() > w.msg.deadline]
        for w in late:
            del self.requests[w.msg.request_id]
        cutoff = time.monotonic() - self.orphan_ttl_s
        for rid in [rid for rid, items in self.orphans.items() if items[0][0] < cutoff]:
            self.orphan_bytes -= sum(_nbytes(m) for _, m in self.orphans.pop(rid))
            self.orphans_dropped += 1
        return late

    def remove(self, request_id: str) -> bool:
        dropped = self.orphans.pop(request_id, [])
        self.orphan_bytes -= sum(_nbytes(m) for _, m in dropped)
        return self.requests.pop(request_id, None) is not None or bool(dropped)


def _nbytes(msg: ImageEmbeddingResult | StageError) -> int:
    return msg.nbytes if isinstance(msg, ImageEmbeddingResult) else 256
