"""The codec's compiled decoders against its generic walk, on the wire fuzzer's messages.

Each message type's valid template, and its mutations by every kind of ``bench.fuzz_wire_messages``,
decoded with the fast path on and with it off: the same message (compared as its frames) or the
same error, every time. A valid message never falls back to the generic walk.
"""

from __future__ import annotations

import random
from pathlib import Path

import msgpack
import pytest

from bench.fuzz_wire_messages import MUTATIONS, Templates, _at, _paths, frames_of, mutate
from shared.models.config import load_config
from shared.wire import WireError, codec, decode, encode
from shared.wire.compiled import Slow
from shared.wire.schema import MESSAGES

pytestmark = pytest.mark.unit

DEMO = Path(__file__).resolve().parents[2] / "shared" / "assets" / "demo"


def _give_up(raw, ctx):
    raise Slow


def outcome(frames: list[bytes]) -> tuple[str, object]:
    try:
        msg = decode(frames)
    except WireError as e:
        return "error", str(e)
    return "message", [bytes(f) for f in encode(msg, check=False)]


def both_ways(cases: list[tuple[str, object, list[bytes]]], monkeypatch: pytest.MonkeyPatch) -> list:
    """Decode every case with the fast path, then with it off; the outcomes must be equal. Returns
    the generic walk's."""
    fast = [outcome(frames) for _, _, frames in cases]
    monkeypatch.setattr(codec, "struct_decoder", lambda schema: _give_up)
    generic = [outcome(frames) for _, _, frames in cases]
    for (name, what, _), f, g in zip(cases, fast, generic, strict=True):
        assert f == g, f"{name} {what}: fast {f[0]} {str(f[1])[:200]} / generic {g[0]} {str(g[1])[:200]}"
    return generic


@pytest.fixture
def templates() -> Templates:
    return Templates(load_config(DEMO), "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "tcp://127.0.0.1:3", seed=0)


@pytest.fixture
def generic_walks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts the bodies that went through the generic walk (the fast path gave up on them)."""
    walks: list[str] = []
    walk = codec._decode_struct

    def counted(raw, schema, ctx, prefix):
        if not prefix:
            walks.append(schema.name)
        return walk(raw, schema, ctx, prefix)

    monkeypatch.setattr(codec, "_decode_struct", counted)
    return walks


def test_valid_messages_take_the_fast_path(templates: Templates, generic_walks: list[str]) -> None:
    rng = random.Random(0)
    for name in sorted(MESSAGES):
        for _ in range(5):
            kind, _ = outcome(frames_of(templates.make[name](rng)))
            assert kind == "message", name
    assert generic_walks == []


def test_fast_and_generic_agree_on_every_mutation(
    templates: Templates, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(1)
    cases: list[tuple[str, object, list[bytes]]] = []
    for name in sorted(MESSAGES):
        for kind in MUTATIONS:
            for _ in range(6):
                cases.append((name, kind, mutate(frames_of(templates.make[name](rng)), kind, rng)))
    generic = both_ways(cases, monkeypatch)
    assert 0 < sum(g[0] == "message" for g in generic) < len(cases)  # both sides of the line exercised


# Past every bound a field may have: lengths, ranges, types, finiteness, a pattern's alphabet.
EDGES: tuple[object, ...] = (None, -1, 0, 1 << 40, -(1 << 63), 0.5, float("nan"), float("inf"), True, "", "x" * 65_537,
         "G" * 64, "ü", b"\xff", [], [0] * 300, [None], {}, {"zz": 1})  # fmt: skip


def test_fast_and_generic_agree_on_every_field_at_every_edge(
    templates: Templates, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(2)
    cases: list[tuple[str, object, list[bytes]]] = []
    for name in sorted(MESSAGES):
        frames = frames_of(templates.make[name](rng))
        header = msgpack.unpackb(frames[0], raw=False)
        for path in _paths(header["body"]):
            for edge in EDGES:
                changed = msgpack.unpackb(frames[0], raw=False)
                _at(changed["body"], path)[path[-1]] = edge
                cases.append((name, path, [msgpack.packb(changed, use_bin_type=True), *frames[1:]]))
    generic = both_ways(cases, monkeypatch)
    assert len(cases) > 1000 and 0 < sum(g[0] == "message" for g in generic) < len(cases)
