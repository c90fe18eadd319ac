"""``LoadReport`` and ``RouterHeartbeat`` (``shared.wire.messages.cluster``) round-trip, and a
report that cannot be a worker's is refused on receipt."""

from __future__ import annotations

import pytest

from shared.wire import WireError, decode, encode
from shared.wire.messages import LoadReport, RouterHeartbeat, Stage, WorkerState

pytestmark = pytest.mark.unit


def test_round_trips() -> None:
    r = LoadReport("decode-1", Stage.DECODE, "tcp://10.0.0.5:5801", "tcp://10.0.0.5:5800", "http://10.0.0.5:8800",
                   WorkerState.DRAINING, 3, 4, 100, 512, 0, 1.7e9)  # fmt: skip
    got = decode(encode(r))
    assert (got.kind, got.address, got.inbox, got.http, got.state) == (
        Stage.DECODE, "tcp://10.0.0.5:5801", "tcp://10.0.0.5:5800", "http://10.0.0.5:8800", WorkerState.DRAINING,
    )  # fmt: skip
    assert (got.running, got.queued, got.free_blocks, got.total_blocks, got.time) == (3, 4, 100, 512, 1.7e9)
    enc = decode(encode(LoadReport("e", Stage.ENCODER, "tcp://e:5600", cache_bytes=1 << 20)))
    assert (enc.inbox, enc.state, enc.cache_bytes) == ("", WorkerState.SERVING, 1 << 20)
    beat = decode(encode(RouterHeartbeat("tcp://router-0:5900", 1.7e9)))
    assert (beat.inbox, beat.time) == ("tcp://router-0:5900", 1.7e9)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"kind": Stage.ROUTER}, "worker stage"),
        ({"kind": Stage.PREFILL, "inbox": ""}, "reports its inbox"),
        ({"inbox": "not an address"}, "not a ZMQ address"),
        ({"http": "ftp://x"}, "http://HOST:PORT"),
        ({"address": "nowhere"}, "address"),
        ({"running": -1}, "running"),
    ],
)
def test_bad_reports_are_refused(changes: dict, match: str) -> None:
    fields = {"source": "w", "kind": Stage.DECODE, "address": "tcp://h:1", "inbox": "tcp://h:2", **changes}
    with pytest.raises((WireError, ValueError), match=match):
        decode(encode(LoadReport(**fields), check=False))
