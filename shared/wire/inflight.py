"""Per-peer limits on the requests in flight through a ROUTER socket.

A ROUTER names each connected DEALER by its routing identity; ``PeerLimit`` counts, per identity,
the requests a service holds for it and says when one more would pass ``limit``. The service then
answers ``StageError(overloaded)`` on the ROUTER instead of queueing, so that one peer (a runaway
router, a replayed stream) cannot fill the queues every other peer shares.

A request may be held in parts (the encoder holds a request's images separately): ``hold(peer,
rid, part)`` and ``release(rid, part)`` (releasing what is not held does nothing). A request counts
while any of its parts is held. Obligations of the caller: release every part it holds when it
ends, by every path; or pass ``held``, a predicate that says whether the service still holds a
request, and the limit sweeps out what was not released, before it refuses a peer and whenever
the table has doubled since the last sweep, so a missed release never turns into a refusal.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

SWEEP_AT_LEAST = 1024  # table entries before the first sweep


class PeerLimit:
    def __init__(self, limit: int, held: Callable[[str], bool] | None = None) -> None:
        if limit < 1:
            raise ValueError("the per-peer limit must be >= 1")
        self.limit = limit
        self.held = held
        self._peers: dict[bytes, dict[str, set[Hashable]]] = {}  # peer -> request id -> parts held
        self._owner: dict[str, bytes] = {}  # request id -> its peer
        self._next_sweep = SWEEP_AT_LEAST

    def __len__(self) -> int:
        """Requests held, all peers together."""
        return len(self._owner)

    def count(self, peer: bytes) -> int:
        return len(self._peers.get(peer, ()))

    def full(self, peer: bytes, request_id: str | None = None) -> bool:
        """Whether a new request (``request_id``, when given, not already held) would pass the limit."""
        if request_id is not None and self._owner.get(request_id) == peer:
            return False
        if self.count(peer) >= self.limit and self.held is not None:
            self._sweep([peer])
        return self.count(peer) >= self.limit

    def hold(self, peer: bytes, request_id: str, part: Hashable = None) -> None:
        owner = self._owner.get(request_id)
        if owner is not None and owner != peer:  # a request id reused by another peer: now theirs
            self._drop(request_id)
        self._owner[request_id] = peer
        self._peers.setdefault(peer, {}).setdefault(request_id, set()).add(part)
        if len(self._owner) >= self._next_sweep and self.held is not None:
            self._sweep(list(self._peers))
            self._next_sweep = max(SWEEP_AT_LEAST, 2 * len(self._owner))

    def release(self, request_id: str, part: Hashable = None) -> None:
        peer = self._owner.get(request_id)
        if peer is None:
            return
        parts = self._peers[peer][request_id]
        parts.discard(part)
        if not parts:
            self._drop(request_id)

    def _drop(self, request_id: str) -> None:
        peer = self._owner.pop(request_id)
        requests = self._peers[peer]
        del requests[request_id]
        if not requests:
            del self._peers[peer]

    def _sweep(self, peers: list[bytes]) -> None:
        assert self.held is not None
        for peer in peers:
            for rid in [r for r in self._peers.get(peer, {}) if not self.held(r)]:
                self._drop(rid)
