"""``python -m bench.codec_bench``: what the wire codec costs per message, for the messages a request
of the issue-18 load sends (one image, a 130-token prompt, 4 layers of KV, tokens 4 to a record).

For each message: ``encode`` as sockets call it (with the receiver's checks), ``encode`` without
them, and ``decode`` of the frames; microseconds per call, the best of ``--repeats`` timings of
``--calls`` calls each (one process, one thread).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from shared.wire import ImageEmbeddingResult, decode, encode
from shared.wire.messages import (
    ImagePlacement,
    KVLayer,
    KVReserve,
    MRopeSegment,
    PrefillRequest,
    Sampling,
    SequenceTokens,
    StageStamp,
    TokenBatch,
    TraceContext,
)

HASH = "ab" * 32


def messages(prompt_tokens: int = 130) -> dict[str, Any]:
    sampling = Sampling(0.0, 1.0, 0, 0.0, None, 32, [151645, 151643], True, None)
    trace = TraceContext("", 1000.0)
    tokens = list(range(100, 100 + prompt_tokens))
    text = prompt_tokens - 64 - 15
    layout = [
        MRopeSegment(0, 15, 0, None),
        MRopeSegment(15, 64, 15, (1, 8, 8)),
        MRopeSegment(79, text, 23, None),
    ]
    stamps = [StageStamp("vision", 1.0, 0.01), StageStamp("encode_queue", 0.99, 0.01)]
    return {
        "PrefillRequest": PrefillRequest(
            "req-1",
            tokens,
            layout,
            -56,
            [ImagePlacement(0, HASH, 15, 64)],
            sampling,
            "tcp://127.0.0.1:5801",
            "tcp://127.0.0.1:7001",
            time.time() + 60,
            trace,
        ),  # fmt: skip
        "KVReserve": KVReserve(
            "req-1",
            tokens,
            prompt_tokens,
            -56,
            sampling,
            4,
            "tcp://127.0.0.1:7001",
            time.time() + 60,
            "prefill@tcp://127.0.0.1:5700",
            trace,
        ),  # fmt: skip
        "ImageEmbeddingResult": ImageEmbeddingResult(
            "req-1", 0, HASH, (1, 16, 16), torch.zeros(64, 128), torch.zeros(2, 64, 128), stamps=stamps
        ),
        "KVLayer": KVLayer(
            "req-1", 0, torch.zeros(prompt_tokens, 2, 32), torch.zeros(prompt_tokens, 2, 32), 0
        ),
        "TokenBatch 3x4": TokenBatch(
            "decode@tcp://127.0.0.1:5801", [SequenceTokens(f"req-{i}", [11, 12, 13, 14]) for i in range(3)]
        ),
    }


def best_us(fn: Callable[[], object], calls: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, time.perf_counter() - start)
    return round(best / calls * 1e6, 2)


def measure(calls: int, repeats: int) -> dict[str, dict[str, float]]:
    out = {}
    for name, msg in messages().items():
        frames = [bytes(f) for f in encode(msg)]
        out[name] = {
            "encode_us": best_us(lambda m=msg: encode(m), calls, repeats),
            "encode_unchecked_us": best_us(lambda m=msg: encode(m, check=False), calls, repeats),
            "decode_us": best_us(lambda f=frames: decode(f), calls, repeats),
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.codec_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="write the figures here too")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    results = measure(a.calls, a.repeats)
    print(f"{'message':22s} {'encode':>9s} {'unchecked':>10s} {'decode':>9s}   (us per call)")
    for name, r in results.items():
        print(f"{name:22s} {r['encode_us']:9.1f} {r['encode_unchecked_us']:10.1f} {r['decode_us']:9.1f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
