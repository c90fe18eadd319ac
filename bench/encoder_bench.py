"""Encoder benchmark: images/s with and without cross-request batching, and embedding transport
throughput as a fraction of raw ZMQ loopback bandwidth measured in the same run.

    python bench/encoder_bench.py [--requests 64] [--transport-mib 16] [--repeats 3] [--json out.json]

1. Throughput: a burst of single-image requests (PNG, mixed sizes, all distinct, cache off) into an
   encoder process, with cross-request batching at three patch budgets and without it; images/s
   from the first send to the last result at the test's prefill inbox. Best of ``--repeats``.
2. Transport, three flows of the same payload (one image's embeds + deepstack, bf16):
   raw    - bare PUSH/PULL on tcp loopback, one frame per message, copy=False both ways, between
            two threads of this process, and between two processes;
   wire   - ``PushSocket``/``PullSocket`` with ``ImageEmbeddingResult`` (encode, validate, decode),
            between two threads of this process (compared with raw in one process);
   served - the encoder process answering hash-only requests for a cached 1024x1024 image, into
            this process (compared with raw between two processes).
   The ratios are the figures of merit (target >= 0.6).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import zmq
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.clients.encoder import EncoderClient, build_request  # noqa: E402
from bench.clients.encoder_launch import start_encoder  # noqa: E402
from shared.checkpoint.tiny import cached_tiny_checkpoint  # noqa: E402
from shared.multimodal.image import image_hash  # noqa: E402
from shared.wire import ImageEmbeddingResult, PullSocket, PushSocket  # noqa: E402

# Vision tower small enough for a shared 2-core CPU; output width 2048 as in Qwen3-VL-30B-A3B, so
# that one 1024x1024 image ships 1024 tokens x 3 x 2048 bf16 = 12 MiB, as it would in production.
BENCH_SPEC = dict(
    hidden_size=2048,
    vision_hidden_size=128,
    vision_num_heads=2,
    vision_intermediate_size=512,
    vision_depth=4,
    deepstack_visual_indexes=(1, 2),
    num_position_embeddings=2304,
)
SIZES = [(128, 128), (192, 128), (128, 256), (256, 256), (160, 224), (96, 320)]


def png(width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def burst(address: str, images: list[bytes], inbox: PullSocket, tag: str) -> float:
    """Send one single-image request per image at once; seconds until every result arrived."""
    client = EncoderClient(address)
    requests = [
        build_request(f"{tag}-{i}", {0: data}, inbox.endpoint, timeout_s=600) for i, data in enumerate(images)
    ]
    start = time.perf_counter()
    for request in requests:
        client.send(request)
    for _ in images:
        msg = inbox.recv(600)
        if not isinstance(msg, ImageEmbeddingResult):
            raise RuntimeError(f"expected a result, got {msg!r}")
    elapsed = time.perf_counter() - start
    client.close()
    return elapsed


MODES = {
    "cross-request, budget 1024": ["--patch-budget", "1024"],
    "cross-request, budget 4096": ["--patch-budget", "4096"],
    "cross-request, budget 16384": ["--patch-budget", "16384"],
    "per-request only": ["--no-cross-request-batching", "--patch-budget", "16384"],
}


def throughput(ckpt: Path, n: int, repeats: int, log_dir: Path) -> dict[str, dict[str, float]]:
    out = {}
    for mode, flags in MODES.items():
        enc = start_encoder(
            ckpt, *flags, "--cache-bytes", "0", "--torch-threads", "1", "--dtype", "bfloat16", log_dir=log_dir
        )
        inbox = PullSocket("tcp://127.0.0.1:0", bind=True)
        try:
            burst(enc.zmq, [png(64, 64, 10_000 + i) for i in range(4)], inbox, "warm")
            rounds = [
                [png(*SIZES[i % len(SIZES)], seed=r * 1000 + i) for i in range(n)] for r in range(repeats)
            ]
            best = min(burst(enc.zmq, images, inbox, f"r{r}") for r, images in enumerate(rounds))
            forwards = enc.metric("encoder_vision_forwards_total")
            images = enc.metric("encoder_batch_images_sum")
        finally:
            inbox.close()
            enc.stop()
        out[mode] = {
            "images_per_s": n / best,
            "seconds": best,
            "mean_batch_images": images / max(forwards, 1),
        }
    return out


def _pump(recv: zmq.Socket | PullSocket, count: int, done: list[float], wire: bool) -> None:
    for _ in range(count):
        if wire:
            msg = recv.recv(60)  # type: ignore[call-arg]
            assert msg is not None
        else:
            recv.recv_multipart(copy=False)  # type: ignore[union-attr]
    done.append(time.perf_counter())


def raw_bandwidth(payload: bytes, count: int) -> float:
    ctx = zmq.Context.instance()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push.connect(f"tcp://127.0.0.1:{port}")
    done: list[float] = []
    reader = threading.Thread(target=_pump, args=(pull, count, done, False))
    reader.start()
    start = time.perf_counter()
    for _ in range(count):
        push.send(payload, copy=False)
    reader.join()
    push.close()
    pull.close()
    return len(payload) * count / (done[0] - start)


SENDER = """
import sys, zmq
ctx = zmq.Context(); push = ctx.socket(zmq.PUSH); push.connect(sys.argv[1])
payload = bytes(int(sys.argv[2]))
for _ in range(int(sys.argv[3])):
    push.send(payload, copy=False)
push.close(linger=-1); ctx.term()
"""


def raw_bandwidth_xproc(size: int, count: int) -> float:
    """Raw PUSH/PULL between two processes (as the encoder and prefill are), first to last frame."""
    pull = zmq.Context.instance().socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    sender = subprocess.Popen(
        [sys.executable, "-c", SENDER, f"tcp://127.0.0.1:{port}", str(size), str(count)]
    )
    try:
        pull.recv_multipart(copy=False)
        start = time.perf_counter()
        for _ in range(count - 1):
            pull.recv_multipart(copy=False)
        return size * (count - 1) / (time.perf_counter() - start)
    finally:
        sender.wait(60)
        pull.close()


def wire_bandwidth(msg: ImageEmbeddingResult, count: int) -> float:
    inbox = PullSocket("tcp://127.0.0.1:0", bind=True)
    push = PushSocket(inbox.endpoint, bind=False)
    done: list[float] = []
    reader = threading.Thread(target=_pump, args=(inbox, count, done, True))
    reader.start()
    start = time.perf_counter()
    for _ in range(count):
        push.send(msg, timeout=60)
    reader.join()
    push.close()
    inbox.close()
    return msg.nbytes * count / (done[0] - start)


class ServedFlow:
    """An encoder process holding one cached 1024x1024 image; ``measure`` asks for it ``count``
    times by hash and returns the bytes/s of results arriving at this process's inbox."""

    def __init__(self, ckpt: Path, count: int, log_dir: Path) -> None:
        self.enc = start_encoder(ckpt, "--torch-threads", "1", "--dtype", "bfloat16", log_dir=log_dir)
        self.inbox = PullSocket("tcp://127.0.0.1:0", bind=True)
        self.client = EncoderClient(self.enc.zmq)
        self.count = count
        self.image = png(1024, 1024, seed=7)
        self.hashes = {0: image_hash(self.image)}  # a router hashes once, when it loads the image
        self.client.submit("fill", {0: self.image}, self.inbox.endpoint, timeout_s=600)
        first = self.inbox.recv(600)
        assert isinstance(first, ImageEmbeddingResult), first
        self.payload_bytes = first.nbytes
        self.rounds = 0

    def measure(self) -> float:
        self.rounds += 1
        requests = [
            build_request(
                f"hit-{self.rounds}-{i}",
                {0: self.image},
                self.inbox.endpoint,
                with_bytes=False,
                hashes=self.hashes,
            )
            for i in range(self.count)
        ]
        for request in requests:
            self.client.send(request)
        shipped, start = 0, 0.0
        for i in range(self.count):  # timed from the first result to the last, as raw_bandwidth_xproc
            msg = self.inbox.recv(60)
            assert isinstance(msg, ImageEmbeddingResult) and msg.cached, msg
            if i == 0:
                start = time.perf_counter()
            else:
                shipped += msg.nbytes
        return shipped / (time.perf_counter() - start)

    def close(self) -> None:
        self.client.close()
        self.inbox.close()
        self.enc.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--transport-count", type=int, default=40, help="messages per transport measurement")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/encoder-bench"))
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--transport-only", action="store_true", help="skip the images/s part")
    args = p.parse_args()
    torch.set_num_threads(1)
    ckpt = cached_tiny_checkpoint(args.work_dir / "checkpoints", **BENCH_SPEC)
    logs = args.work_dir / "logs"

    batching = throughput(ckpt, args.requests, args.repeats, logs) if not args.transport_only else {}
    tokens, hidden = 1024, BENCH_SPEC["hidden_size"]
    msg = ImageEmbeddingResult(
        "bench", 0, "0" * 64, (1, 64, 64),
        torch.randn(tokens, hidden).bfloat16(), torch.randn(2, tokens, hidden).bfloat16(),
    )  # fmt: skip
    raw, wire, xproc, served = [], [], [], []
    flow = ServedFlow(ckpt, args.transport_count, logs)
    payload_bytes = flow.payload_bytes
    try:
        for _ in range(args.repeats):  # interleaved, so that machine noise hits all alike
            raw.append(raw_bandwidth(bytes(msg.nbytes), args.transport_count))
            wire.append(wire_bandwidth(msg, args.transport_count))
            xproc.append(raw_bandwidth_xproc(payload_bytes, args.transport_count))
            served.append(flow.measure())
    finally:
        flow.close()
    raw_best, wire_best, xproc_best, served_best = max(raw), max(wire), max(xproc), max(served)
    results = {
        "batching": batching,
        "transport": {
            "payload_mib": msg.nbytes / 2**20,
            "served_payload_mib": payload_bytes / 2**20,
            "raw_zmq_gib_s": raw_best / 2**30,
            "wire_gib_s": wire_best / 2**30,
            "raw_zmq_xproc_gib_s": xproc_best / 2**30,
            "served_gib_s": served_best / 2**30,
            "wire_over_raw": wire_best / raw_best,
            "served_over_raw_xproc": served_best / xproc_best,
        },
    }
    if batching:
        print(
            f"images/s, {args.requests} single-image requests (bf16, 1 torch thread), best of {args.repeats}:"
        )
        base = batching["per-request only"]["images_per_s"]
        for mode, r in batching.items():
            print(
                f"  {mode:28s} {r['images_per_s']:7.1f}  ({r['mean_batch_images']:4.1f} images/forward, "
                f"{r['images_per_s'] / base:.2f}x)"
            )
    t = results["transport"]
    print(f"transport, {t['payload_mib']:.0f} MiB messages x {args.transport_count}, best of {args.repeats}:")
    print(f"  raw ZMQ, one process       {t['raw_zmq_gib_s']:6.2f} GiB/s")
    print(f"  wire (codec + sockets)     {t['wire_gib_s']:6.2f} GiB/s  = {t['wire_over_raw']:.0%} of raw")
    print(f"  raw ZMQ, two processes     {t['raw_zmq_xproc_gib_s']:6.2f} GiB/s")
    print(
        f"  served by the encoder      {t['served_gib_s']:6.2f} GiB/s  = {t['served_over_raw_xproc']:.0%} of raw"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
