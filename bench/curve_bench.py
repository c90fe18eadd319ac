"""What CurveZMQ costs in bandwidth: the two bulk flows of the mesh, plain vs Curve, same run.

    python bench/curve_bench.py [--repeats 3] [--embeddings 16] [--kv-tokens 2048] [--json out.json]

Two processes on TCP loopback, as the services are: this one sends with the typed sockets, a
spawned child receives (decoding and validating every message, as a service does). Flows:

* embedding - ``ImageEmbeddingResult`` of a 1024x1024 image at the Qwen3-VL-30B-A3B shape: 1024
  tokens x (1 + 3 deepstack levels) x 2048 x bf16 = 16 MiB a message, ``--embeddings`` of them,
  PUSH -> PULL (encoder -> prefill inbox);
* kv        - one prompt's ``KVLayer`` messages: 48 layers of ``--kv-tokens`` tokens x 4 KV heads
  x 128 x bf16, K and V (2048 tokens: 4 MiB a layer, 192 MiB a prompt), DEALER -> ROUTER
  (prefill -> decode, ``--kv-transfer zmq``).

Each timed run sends one warm-up message (the handshake), then the flow; time runs from the first
send to the child's report that the last message was decoded. Plain and Curve runs alternate,
``--repeats`` each; the medians are printed as GiB/s (2^30 bytes of payload per second) with the
ratio curve/plain. Curve encrypts in ZMQ's I/O thread of each process (one per context), so the
cost is CPU on both ends: on a machine with few cores it also competes with the services.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.wire import (  # noqa: E402
    DealerSocket,
    ImageEmbeddingResult,
    PullSocket,
    PushSocket,
    RouterSocket,
    security,  # noqa: E402
)
from shared.wire.messages import KVLayer  # noqa: E402

TOKENS, HIDDEN, DEEPSTACK = 1024, 2048, 3
LAYERS, KV_HEADS, HEAD_DIM = 48, 4, 128
MODES = ("plain", "curve")
TIMEOUT_S = 120.0


def embedding() -> ImageEmbeddingResult:
    embeds = torch.randn(TOKENS, HIDDEN).bfloat16()  # [n, H]
    deepstack = torch.randn(DEEPSTACK, TOKENS, HIDDEN).bfloat16()  # [S, n, H]
    return ImageEmbeddingResult("bench", 0, "f" * 64, (1, 64, 64), embeds, deepstack)


def kv_layers(tokens: int) -> list[KVLayer]:
    k = torch.randn(tokens, KV_HEADS, HEAD_DIM).bfloat16()  # [n, Hkv, D]
    return [KVLayer("bench", layer, k, k.clone()) for layer in range(LAYERS)]


def payload(msg: Any) -> int:
    if isinstance(msg, KVLayer):
        return msg.keys.nbytes + msg.values.nbytes
    return int(msg.nbytes)


def receiver(conn: Connection) -> None:
    """The child: per command (keys dir or None, flow, count) bind, receive warm-up + count, report."""
    torch.set_num_threads(1)
    while (cmd := conn.recv()) is not None:
        keys, flow, count = cmd
        security.configure(keys)
        sock: PullSocket | RouterSocket
        sock = (
            PullSocket("tcp://127.0.0.1:0", bind=True)
            if flow == "embedding"
            else RouterSocket("tcp://127.0.0.1:0", bind=True)
        )
        conn.send(sock.endpoint)
        for i in range(count + 1):
            if sock.recv(TIMEOUT_S) is None:
                raise SystemExit(f"receiver: nothing for {TIMEOUT_S} s")
            if i == 0:
                conn.send("warm")
        conn.send("done")
        sock.close()
        security.configure(None)


def run(conn: Connection, keys: Path | None, flow: str, msgs: list[Any]) -> float:
    """GiB/s of payload for one timed run of ``msgs``."""
    security.configure(keys)
    conn.send((keys, flow, len(msgs)))
    endpoint = conn.recv()
    sock = PushSocket(endpoint, bind=False) if flow == "embedding" else DealerSocket(endpoint, bind=False)
    try:
        sock.send(msgs[0], TIMEOUT_S)  # warm-up: connection and handshake
        assert conn.recv() == "warm"
        start = time.perf_counter()
        for msg in msgs:
            sock.send(msg, TIMEOUT_S)
        if not conn.poll(TIMEOUT_S) or conn.recv() != "done":
            raise RuntimeError("receiver did not finish")
        seconds = time.perf_counter() - start
    finally:
        sock.close()
        security.configure(None)
    return sum(payload(m) for m in msgs) / seconds / (1 << 30)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--embeddings", type=int, default=16, help="16 MiB messages per embedding run")
    parser.add_argument("--kv-tokens", type=int, default=2048, help="prompt tokens of the KV run (48 layers)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    flows = {"embedding": [embedding()] * args.embeddings, "kv": kv_layers(args.kv_tokens)}
    ctx = mp.get_context("spawn")
    parent, child_conn = ctx.Pipe()
    child = ctx.Process(target=receiver, args=(child_conn,), daemon=True)
    child.start()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys"
        security.write_keys(keys)
        try:
            for flow, msgs in flows.items():
                rates: dict[str, list[float]] = {m: [] for m in MODES}
                for _ in range(args.repeats):
                    for mode in MODES:
                        rates[mode].append(run(parent, keys if mode == "curve" else None, flow, msgs))
                med = {m: statistics.median(r) for m, r in rates.items()}
                results[flow] = {
                    "message_mib": payload(msgs[0]) / (1 << 20),
                    "messages": len(msgs),
                    "gib_per_s": med,
                    "runs": rates,
                    "curve_over_plain": med["curve"] / med["plain"],
                }
        finally:
            parent.send(None)
            child.join(10)
    print(f"{'flow':10s} {'message':>10s} {'plain GiB/s':>12s} {'curve GiB/s':>12s} {'curve/plain':>12s}")
    for flow, r in results.items():
        print(
            f"{flow:10s} {r['message_mib']:8.1f}Mi {r['gib_per_s']['plain']:12.2f} "
            f"{r['gib_per_s']['curve']:12.2f} {r['curve_over_plain']:12.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
