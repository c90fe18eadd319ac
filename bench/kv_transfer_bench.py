"""KV transfer benchmark: throughput as a fraction of raw ZMQ loopback, and prefill -> decode handoff.

    python bench/kv_transfer_bench.py [--tokens 2000] [--repeats 5] [--json out.json]

1. Throughput. The KV of one ``--tokens`` prompt of Qwen3-VL-30B-A3B in bf16 (48 layers, keys and
   values of [T, 4, 128] each: 96 KiB per token) moved over tcp loopback between two threads:
   raw  - bare PUSH/PULL, two frames per layer, copy=False, the receiver touches every frame;
   kv   - ``ZmqKVSender`` -> ``ZmqKVReceiver``: reserve, grant, 48 ``KVLayer`` messages (encode,
          validate, decode into tensors), done, ack, i.e. the whole protocol as prefill and
          decode run it, minus the engine's pool reads/writes.
   Best of ``--repeats``; the ratio kv / raw is the figure of merit.
2. Handoff. Real encoder-less prefill and decode processes on a tiny checkpoint: for each
   ``--tokens`` text prompt, the time from the first token (sampled at the end of prefill,
   received by the router) to the second token (the first decode step), as the router sees it,
   and the decode worker's own "last layer in -> first token out" histogram.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import torch
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.clients.prefill import DecodeTarget, DisaggClient  # noqa: E402
from bench.launch import start_service  # noqa: E402
from shared.checkpoint.tiny import cached_tiny_checkpoint  # noqa: E402
from shared.engine import SamplingParams  # noqa: E402
from shared.transfer import ReplyEvent, ZmqKVReceiver, ZmqKVSender  # noqa: E402
from shared.wire.messages import KVDone, KVLayer, KVReserve, Sampling  # noqa: E402

LAYERS, KV_HEADS, HEAD_DIM = 48, 4, 128


def layer_tensors(tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [
        (
            torch.randn(tokens, KV_HEADS, HEAD_DIM).bfloat16(),
            torch.randn(tokens, KV_HEADS, HEAD_DIM).bfloat16(),
        )
        for _ in range(LAYERS)
    ]


def raw_zmq(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    ctx = zmq.Context.instance()
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    total = sum(k.nbytes + v.nbytes for k, v in layers)

    def recv() -> None:
        for _ in layers:
            frames = pull.recv_multipart(copy=False)
            sum(len(f.buffer) for f in frames)

    t = threading.Thread(target=recv)
    start = time.perf_counter()
    t.start()
    for k, v in layers:
        push.send_multipart([k.view(torch.uint8).numpy(), v.view(torch.uint8).numpy()], copy=False)
    t.join()
    took = time.perf_counter() - start
    push.close()
    pull.close()
    return total / took


def kv_protocol(layers: list[tuple[torch.Tensor, torch.Tensor]], tokens: int) -> float:
    receiver = ZmqKVReceiver("tcp://127.0.0.1:0")
    sender = ZmqKVSender()
    total = sum(k.nbytes + v.nbytes for k, v in layers)
    sampling = Sampling(0.0, 1.0, 0, 0.0, None, 16, [], False, None)
    reserve = KVReserve(
        "bench", list(range(tokens + 1)), tokens, 0, sampling, LAYERS, "tcp://127.0.0.1:9", 1e12, "b"
    )

    def decode_side() -> None:
        got = 0
        while True:
            for msg in receiver.poll(1.0):
                if isinstance(msg, KVReserve):
                    receiver.grant(msg.request_id)
                elif isinstance(msg, KVLayer):
                    got += msg.keys.nbytes + msg.values.nbytes
                elif isinstance(msg, KVDone):
                    assert got == total
                    receiver.ack(msg.request_id)
                    return

    t = threading.Thread(target=decode_side)
    t.start()
    start = time.perf_counter()
    sender.reserve(receiver.address, reserve, 5)
    replies = []
    while not replies:
        replies = sender.poll(1.0)
    assert replies[0].event is ReplyEvent.GRANTED
    for i, (k, v) in enumerate(layers):
        sender.send_layer(receiver.address, "bench", i, k, v, 5)
    sender.finish(receiver.address, "bench", LAYERS, 5)
    replies = []
    while not replies:
        replies = sender.poll(1.0)
    took = time.perf_counter() - start
    assert replies[0].event is ReplyEvent.ACKED
    t.join()
    sender.close()
    receiver.close()
    return total / took


def handoff(tokens: int, prompts: int) -> dict:
    spec = dict(
        num_hidden_layers=4, hidden_size=256, num_attention_heads=8, num_key_value_heads=4, head_dim=32
    )
    ckpt = cached_tiny_checkpoint(Path("/tmp/kv-bench-checkpoints"), **spec)
    common = ("--torch-threads", "1", "--dtype", "float32", "--http-port", "0")
    prefill = start_service("services.prefill", ckpt, *common, "--port", "0", "--inbox-port", "0")
    client = DisaggClient(prefill.info["zmq"], prefill.info["inbox"], None, 1012, 2, heartbeat_timeout_s=30)
    decode = start_service(
        "services.decode", ckpt, *common, "--port", "0", "--kv-port", "0", "--report-to", client.reply_to
    )
    try:
        gaps = []
        for i in range(prompts):
            ids = torch.randint(0, 1000, (tokens,), generator=torch.Generator().manual_seed(i)).tolist()
            params = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
            client.submit(f"h{i}", ids, [], params, DecodeTarget(decode.info["kv"], decode.info["control"]))
            o = client.collect(60)[f"h{i}"]
            assert o.error is None and len(o.tokens) == 2, o
            gaps.append(o.token_times[1] - o.token_times[0])
        count = decode.metric("decode_handoff_seconds_count")
        mean_decode = decode.metric("decode_handoff_seconds_sum") / max(count, 1)
        kv_bytes = prefill.metric("prefill_kv_bytes_sent_total") / prompts
        return {"router_gap_median_s": statistics.median(gaps), "router_gap_min_s": min(gaps),
                "decode_handoff_mean_s": mean_decode, "kv_bytes_per_prompt": kv_bytes}  # fmt: skip
    finally:
        client.close()
        decode.stop()
        prefill.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--handoff-prompts", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    layers = layer_tensors(args.tokens)
    size = sum(k.nbytes + v.nbytes for k, v in layers)
    raw, kv = [], []
    for _ in range(args.repeats):  # interleaved, so that machine noise hits both alike
        raw.append(raw_zmq(layers))
        kv.append(kv_protocol(layers, args.tokens))
    result = {"payload_bytes": size, "raw_gbps": max(raw) / 1e9, "kv_gbps": max(kv) / 1e9}
    result["ratio"] = result["kv_gbps"] / result["raw_gbps"]
    print(f"payload {size / 2**20:.0f} MiB ({args.tokens} tokens x 48 layers, bf16)")
    print(f"raw ZMQ PUSH/PULL    {result['raw_gbps']:.2f} GB/s")
    print(f"KV transfer protocol {result['kv_gbps']:.2f} GB/s  ({100 * result['ratio']:.0f}% of raw)")
    result["handoff"] = handoff(args.tokens, args.handoff_prompts)
    h = result["handoff"]
    print(
        f"end of prefill -> first decode token at the router: median {1000 * h['router_gap_median_s']:.1f} ms, "
        f"min {1000 * h['router_gap_min_s']:.1f} ms; decode's last layer -> first token "
        f"{1000 * h['decode_handoff_mean_s']:.1f} ms; KV per prompt {h['kv_bytes_per_prompt'] / 2**20:.1f} MiB"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
