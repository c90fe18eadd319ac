"""Encoder benchmark: images/s with and without cross-request batching, videos/s, and embedding
transport throughput as a fraction of raw ZMQ loopback bandwidth measured in the same run.

    python bench/encoder_bench.py [--requests 64] [--videos 16] [--repeats 3] [--json out.json]

1. Throughput: a burst of single-image requests (PNG, mixed sizes, all distinct, cache off) into an
   encoder process, with cross-request batching at three patch budgets and without it; images/s
   from the first send to the last result at the test's prefill inbox. Best of ``--repeats``.
   Then, the same way, a burst of ``--videos`` single-video requests (distinct MP4s of 16 frames,
   224x224, 4 fps; the checkpoint samples 2 fps: 8 frames, 4 temporal groups of 14x14 patches)
   at patch budget 16384: videos/s and sampled frames/s, decoding and preprocessing included.
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
from router.jobs import video_spec  # noqa: E402
from shared.checkpoint.tiny import cached_tiny_checkpoint  # noqa: E402
from shared.multimodal.image import image_hash  # noqa: E402
from shared.multimodal.video import VideoProcessorConfig, plan_video, probe_video, video_cache_key  # noqa: E402
from shared.multimodal.video_synth import make_video  # noqa: E402
from shared.wire import EncodeRequest, ImageEmbeddingResult, ImageInput, PullSocket, PushSocket  # noqa: E402

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
VIDEO_FRAMES, VIDEO_SIZE, VIDEO_FPS = 16, (224, 224), 4.0  # 4 s of video
# As the images' "budget 16384" row; one video is 4 x 14 x 14 = 784 patches.
VIDEO_FLAGS = ["--patch-budget", "16384", "--cache-bytes", "0", "--torch-threads", "1", "--dtype", "bfloat16"]


def png(width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def image_requests(images: list[bytes], inbox: PullSocket, tag: str) -> list[EncodeRequest]:
    """One single-image request per image."""
    return [
        build_request(f"{tag}-{i}", {0: data}, inbox.endpoint, timeout_s=600) for i, data in enumerate(images)
    ]


def video_request(request_id: str, data: bytes, reply_to: str, cfg: VideoProcessorConfig) -> EncodeRequest:
    """A single-video request, sampled as the router samples it (the checkpoint's fps)."""
    plan = plan_video(probe_video(data), cfg)
    item = ImageInput(0, video_cache_key(image_hash(data), plan, cfg), data, video=video_spec(plan))
    return EncodeRequest(request_id, [item], reply_to, deadline=time.time() + 600)


def burst(address: str, requests: list[EncodeRequest], inbox: PullSocket) -> float:
    """Send the requests (built beforehand) at once; seconds until every result arrived."""
    client = EncoderClient(address)
    start = time.perf_counter()
    for request in requests:
        client.send(request)
    for _ in requests:
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
            burst(enc.zmq, image_requests([png(64, 64, 10_000 + i) for i in range(4)], inbox, "warm"), inbox)
            rounds = [
                [png(*SIZES[i % len(SIZES)], seed=r * 1000 + i) for i in range(n)] for r in range(repeats)
            ]
            best = min(
                burst(enc.zmq, image_requests(images, inbox, f"r{r}"), inbox)
                for r, images in enumerate(rounds)
            )
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


def video_throughput(ckpt: Path, n: int, repeats: int, log_dir: Path) -> dict[str, float]:
    """Videos/s and sampled frames/s of a burst of ``n`` distinct single-video requests, best of ``repeats``."""
    cfg = VideoProcessorConfig.from_checkpoint(ckpt)
    plan = plan_video(probe_video(make_video(VIDEO_FRAMES, *VIDEO_SIZE, fps=VIDEO_FPS)), cfg)
    frames, groups = len(plan.indices), plan.grid_thw[0]

    def requests(tag: str, count: int, seed: int, reply_to: str) -> list[EncodeRequest]:
        videos = [make_video(VIDEO_FRAMES, *VIDEO_SIZE, fps=VIDEO_FPS, seed=seed + i) for i in range(count)]
        return [video_request(f"{tag}-{i}", data, reply_to, cfg) for i, data in enumerate(videos)]

    enc = start_encoder(ckpt, *VIDEO_FLAGS, log_dir=log_dir)
    inbox = PullSocket("tcp://127.0.0.1:0", bind=True)
    try:
        burst(enc.zmq, requests("vwarm", 2, 10_000, inbox.endpoint), inbox)
        rounds = [requests(f"v{r}", n, r * 1000, inbox.endpoint) for r in range(repeats)]
        best = min(burst(enc.zmq, reqs, inbox) for reqs in rounds)
        forwards = enc.metric("encoder_vision_forwards_total")
        items = enc.metric("encoder_batch_images_sum")
    finally:
        inbox.close()
        enc.stop()
    return {
        "videos_per_s": n / best,
        "frames_per_s": n * frames / best,
        "seconds": best,
        "frames_per_video": frames,
        "temporal_groups": groups,
        "mean_batch_videos": items / max(forwards, 1),
    }


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
    p.add_argument("--videos", type=int, default=16, help="single-video requests per burst (0: no video row)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--transport-count", type=int, default=40, help="messages per transport measurement")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/encoder-bench"))
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--transport-only", action="store_true", help="skip the images/s and videos/s parts")
    args = p.parse_args()
    torch.set_num_threads(1)
    ckpt = cached_tiny_checkpoint(args.work_dir / "checkpoints", **BENCH_SPEC)
    logs = args.work_dir / "logs"

    batching = throughput(ckpt, args.requests, args.repeats, logs) if not args.transport_only else {}
    run_videos = args.videos > 0 and not args.transport_only
    video = video_throughput(ckpt, args.videos, args.repeats, logs) if run_videos else {}
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
        "video": video,
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
    if video:
        v = video
        print(
            f"videos/s, {args.videos} single-video requests ({VIDEO_FRAMES} frames "
            f"{VIDEO_SIZE[0]}x{VIDEO_SIZE[1]} at {VIDEO_FPS:g} fps -> {v['frames_per_video']:.0f} frames, "
            f"{v['temporal_groups']:.0f} temporal groups), best of {args.repeats}:"
        )
        print(
            f"  {'cross-request, budget 16384':28s} {v['videos_per_s']:7.1f}  ({v['frames_per_s']:.1f} frames/s, "
            f"{v['mean_batch_videos']:4.1f} videos/forward)"
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
