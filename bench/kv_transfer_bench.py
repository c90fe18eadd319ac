"""KV transfer benchmark: zmq vs mooncake, raw transport and end to end (prefill -> decode).

    python bench/kv_transfer_bench.py [--json out.json]            # everything, the issue's sizes
    python bench/kv_transfer_bench.py --skip-e2e --sizes 2048      # transport only, quick

1. Transport. One prompt's KV at the Qwen3-VL-30B-A3B shape (48 layers, K and V of 4 KV heads x
   128, bf16: 96 KiB per token; 2k tokens = 192 MiB, 32k = 3 GiB) moves between two processes
   over TCP loopback, block size 16, each pool sized for the prompt plus one block. The sender
   (this process) reads a ``KVPool`` filled with random bits; the receiver runs in a spawned child,
   as a decode worker would: it grants blocks 1..n of its pool, copies every ``KVLayer`` into them
   (zmq) or does nothing at all (mooncake: one-sided writes into its registered pool), acks the
   ``KVDone``. Timed: reserve -> ACKED of one transfer, the prompt sent in one ``send`` ("whole")
   in ``--pieces`` back-to-back sends ("pieces", as the layer-pipelined prefill does), and in one
   send from source blocks in random order ("scattered", a fragmented pool: mooncake then writes
   each block of each layer separately). Median of interleaved repeats (zmq, mooncake, zmq, ...);
   GB/s = 1e9 bytes/s of KV payload. Before timing, one transfer per transport and table lands in
   a zeroed pool and is checked byte-exact.
2. End to end. Real ``services.prefill`` and ``services.decode`` processes (``bench.launch``) on
   a random checkpoint with that attention shape (48 layers, 4 KV heads x 128; 4 query heads,
   hidden 256, tiny experts, so that the CPU time goes to attention and KV, not weights), the
   router played by ``DisaggClient``. For each ``--kv-transfer`` (zmq, mooncake) a pipelined
   (``--kv-pipeline``) and an unpipelined (``--no-kv-pipeline``) pair run side by side, and the
   same ``--e2e-prompts`` random prompts of ``--e2e-tokens`` go to each alternately, max_tokens=2,
   ignore_eos. Per config: TTFT (router side: first token received - submitted) and the gap from
   the first to the second token, i.e. what the hand-off adds after prefill: the KV still to
   ship (all of it unpipelined, the last chunk pipelined) plus one decode step.

Decode gets ``--transfer-timeout-s 600``: a pipelined transfer is silent while a
chunk computes, and a CPU step of an 8k prompt comes near the default 30 s.

Threads: torch uses one thread per process (the services get ``--torch-threads 1``). On a CPU
without fast bf16 matmuls (no AVX512-BF16/AMX) pass ``--e2e-dtype float32``: the KV is then twice
the bytes. The 8k end-to-end run costs minutes of CPU per prompt there; ``--e2e-tokens`` scales it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.clients.prefill import DecodeTarget, DisaggClient  # noqa: E402
from bench.launch import ServiceProcess, start_service  # noqa: E402
from shared.checkpoint.tiny import TinySpec, cached_tiny_checkpoint  # noqa: E402
from shared.engine import SamplingParams  # noqa: E402
from shared.engine.kv_pool import KVPool  # noqa: E402
from shared.transfer import (  # noqa: E402
    KVReceiver,
    KVSender,
    MooncakeKVReceiver,
    MooncakeKVSender,
    ReplyEvent,
    ZmqKVReceiver,
    ZmqKVSender,
)
from shared.wire import WireError  # noqa: E402
from shared.wire.messages import KVAbort, KVDone, KVLayer, KVReserve, Sampling  # noqa: E402

LAYERS, KV_HEADS, HEAD_DIM, BLOCK = 48, 4, 128, 16
TRANSPORTS = ("zmq", "mooncake")
HOST = "127.0.0.1"
TIMEOUT_S = 120.0
# A pipelined transfer is silent while its next chunk computes: on a CPU an 8k prompt's last
# chunks take ~20 s a step, near decode's default --transfer-timeout-s of 30 s.
TRANSFER_TIMEOUT_S = 600


# ----- transport: pools -------------------------------------------------------------------------------
def blocks_for(tokens: int) -> int:
    return -(-tokens // BLOCK)


def make_pool(tokens: int) -> KVPool:
    """Room for the prompt plus one block, bf16 on the CPU (what Mooncake's non-CUDA build registers)."""
    return KVPool(
        LAYERS, blocks_for(tokens) + 1, BLOCK, KV_HEADS, HEAD_DIM, torch.bfloat16, torch.device("cpu")
    )


def fill_random(pool: KVPool, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for t in (pool.k, pool.v):
        t.view(torch.int16).random_(-(1 << 15), (1 << 15) - 1, generator=gen)


def digest(pool: KVPool, blocks: list[int]) -> str:
    """Hash of ``blocks``, in order, of every layer, keys then values (no copies)."""
    h = hashlib.blake2b()
    for t in (pool.k, pool.v):
        for layer in range(pool.num_layers):
            rows = t[layer].view(torch.uint8).numpy()  # [N, B, Hkv, D * 2]
            for b in blocks:
                h.update(rows[b].data)
    return h.hexdigest()


# ----- transport: the receiving side, in a child process ----------------------------------------------
def receiver_main(conn: Any) -> None:
    """A decode worker's transfer loop for both transports; commands arrive on ``conn``:
    ("open", tokens) -> {transport: address}, ("zero",), ("digest", count), ("close",), ("quit",)."""
    torch.set_num_threads(1)
    pool: KVPool | None = None
    receivers: dict[str, KVReceiver] = {}
    while True:
        if conn.poll(0):
            cmd, *args = conn.recv()
            if cmd == "open":
                pool = make_pool(args[0])
                receivers = {
                    "zmq": ZmqKVReceiver(f"tcp://{HOST}:0"),
                    "mooncake": MooncakeKVReceiver(f"tcp://{HOST}:0", pool, HOST),
                }
                conn.send({name: r.address for name, r in receivers.items()})
            elif cmd == "zero" and pool is not None:
                pool.k.zero_()
                pool.v.zero_()
                conn.send(True)
            elif cmd == "digest" and pool is not None:
                conn.send(digest(pool, list(range(1, args[0] + 1))))
            elif cmd in ("close", "quit"):
                for r in receivers.values():
                    r.close()
                receivers, pool = {}, None
                conn.send(True)
                if cmd == "quit":
                    return
        serve(receivers, pool)


def serve(receivers: dict[str, KVReceiver], pool: KVPool | None, wait_s: float = 0.005) -> None:
    """Handle what arrived on any receiver, waiting up to ``wait_s`` for the first message."""
    if not receivers or pool is None:
        time.sleep(wait_s)
        return
    poller = zmq.Poller()
    for r in receivers.values():
        for s in r.sockets:
            poller.register(s, zmq.POLLIN)
    poller.poll(int(wait_s * 1000))
    table = list(range(1, pool.num_blocks))  # the sender's blocks 0..n-1 land in 1..n
    for r in receivers.values():
        for msg in r.poll(0):
            if isinstance(msg, KVReserve):
                r.grant(msg.request_id, table[: blocks_for(msg.num_prompt_tokens)])
            elif isinstance(msg, KVLayer):  # zmq: what a decode worker does with each frame
                pool.write_layer(table, msg.layer, msg.keys, msg.values, msg.start)
            elif isinstance(msg, KVDone):
                r.ack(msg.request_id)
            elif isinstance(msg, KVAbort):
                r.forget(msg.request_id)


class RemoteReceiver:
    """The child process and its command pipe."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=receiver_main, args=(child,), daemon=True)
        self.proc.start()

    def call(self, *cmd: Any, timeout: float = 300.0) -> Any:
        self.conn.send(cmd)
        if not self.conn.poll(timeout):
            raise TimeoutError(f"receiver process did not answer {cmd[0]!r}")
        return self.conn.recv()

    def quit(self) -> None:
        try:
            self.call("quit", timeout=30)
        finally:
            self.proc.join(10)
            if self.proc.is_alive():
                self.proc.kill()


# ----- transport: the sending side --------------------------------------------------------------------
def reserve_msg(rid: str, tokens: int) -> KVReserve:
    sampling = Sampling(0.0, 1.0, 0, 0.0, None, 2, [], True, None)
    return KVReserve(rid, [1] * tokens, tokens, 0, sampling, LAYERS, f"tcp://{HOST}:9", 1e12, "bench")


def wait_for(sender: KVSender, rid: str, event: ReplyEvent) -> Any:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        for r in sender.poll(0.05):
            if r.request_id == rid:
                if r.event is not event:
                    raise RuntimeError(f"{rid}: {r.event} ({r.kind}: {r.message}), expected {event}")
                return r
    raise TimeoutError(f"{rid}: no {event} in {TIMEOUT_S:.0f}s")


class TransferFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class Mode:
    """How one transfer is sent: in ``pieces`` sends, from consecutive or scattered source blocks."""

    name: str
    pieces: int = 1
    scattered: bool = False  # source blocks in random order: every block is its own run

    def table(self, tokens: int) -> list[int]:
        table = list(range(blocks_for(tokens)))
        if self.scattered:
            random.Random(tokens).shuffle(table)
        return table


def one_transfer(sender: KVSender, dest: str, rid: str, tokens: int, mode: Mode) -> float:
    """Seconds from reserve to ACKED; raises TransferFailed (after aborting it) when it fails."""
    table = mode.table(tokens)
    step = -(-blocks_for(tokens) // mode.pieces) * BLOCK
    start = time.perf_counter()
    try:
        sender.reserve(dest, reserve_msg(rid, tokens), 5.0)
        grant = wait_for(sender, rid, ReplyEvent.GRANTED).grant
        for lo in range(0, tokens, step):
            sender.send(dest, grant, table, lo, min(lo + step, tokens), 5.0)
        sender.finish(dest, KVDone(rid, LAYERS, [7]), 5.0)
        wait_for(sender, rid, ReplyEvent.ACKED)
    except (RuntimeError, TimeoutError, WireError) as e:
        sender.abort(dest, rid, "bench: failed")
        raise TransferFailed(str(e)) from e
    return time.perf_counter() - start


def kv_bytes(tokens: int, element_size: int = 2) -> int:
    return tokens * LAYERS * 2 * KV_HEADS * HEAD_DIM * element_size


def verify(rx: RemoteReceiver, pool: KVPool, senders: dict, addresses: dict, tokens: int, mode: Mode) -> dict:
    """Per transport: one transfer into a zeroed pool, then 'ok', 'MISMATCH' or the failure."""
    want = digest(pool, mode.table(tokens))
    out = {}
    for name in TRANSPORTS:
        rx.call("zero")
        try:
            one_transfer(senders[name], addresses[name], f"verify-{mode.name}-{name}", tokens, mode)
        except TransferFailed as e:
            out[name] = f"failed: {e}"
            continue
        out[name] = "ok" if rx.call("digest", blocks_for(tokens)) == want else "MISMATCH"
    return out


def compare_size(rx: RemoteReceiver, tokens: int, repeats: int, modes: list[Mode]) -> dict:
    """Both transports for one prompt size: each checked once per table, then timed, interleaved."""
    pool = make_pool(tokens)
    fill_random(pool, seed=tokens)
    addresses = rx.call("open", tokens)
    senders: dict[str, KVSender] = {"zmq": ZmqKVSender(pool), "mooncake": MooncakeKVSender(pool, HOST)}
    times: dict[str, dict[str, list[float | None]]] = {m.name: {t: [] for t in TRANSPORTS} for m in modes}
    errors: dict[str, str] = {}
    try:
        exact = {m.name: verify(rx, pool, senders, addresses, tokens, m) for m in modes if m.pieces == 1}
        for i in range(repeats):
            for mode in modes:
                for name in TRANSPORTS:
                    try:
                        took: float | None = one_transfer(
                            senders[name], addresses[name], f"{mode.name}-{name}-{i}", tokens, mode
                        )
                    except TransferFailed as e:
                        took, errors[f"{mode.name} {name}"] = None, str(e)
                    times[mode.name][name].append(took)
    finally:
        for s in senders.values():
            s.close()
        rx.call("close")
    return size_result(tokens, repeats, times, exact, errors)


def size_result(tokens: int, repeats: int, times: dict, exact: dict, errors: dict) -> dict:
    size = kv_bytes(tokens)
    out: dict[str, Any] = {
        "tokens": tokens, "payload_bytes": size, "repeats": repeats, "byte_exact": exact, "errors": errors,
        "modes": {},
    }  # fmt: skip
    for mode, by_transport in times.items():
        row: dict[str, Any] = {}
        for name, ts in by_transport.items():
            ok = [t for t in ts if t is not None]
            med = statistics.median(ok) if ok else None
            row[name] = {
                "median_s": med, "gbps": size / med / 1e9 if med else None, "times_s": ts,
                "failed": len(ts) - len(ok),
            }  # fmt: skip
        z, m = row["zmq"]["gbps"], row["mooncake"]["gbps"]
        row["mooncake_over_zmq"] = m / z if m and z else None
        out["modes"][mode] = row
    return out


def transport_comparison(sizes: list[int], repeats: int, long_repeats: int, modes: list[Mode]) -> list[dict]:
    rx = RemoteReceiver()
    try:
        results = []
        for tokens in sizes:
            n = long_repeats if tokens > 8192 else repeats
            results.append(compare_size(rx, tokens, n, modes))
            print_size(results[-1], modes)
        return results
    finally:
        rx.quit()


def mode_label(mode: Mode) -> str:
    sends = "1 send" if mode.pieces == 1 else f"{mode.pieces} sends"
    return f"{sends}{', scattered' if mode.scattered else ''}"


def cell(r: dict) -> str:
    if r["median_s"] is None:
        return f"{'FAILED':>21}"
    failed = f" ({r['failed']} failed)" if r["failed"] else ""
    return f"{r['median_s']:7.3f} s {r['gbps']:6.2f} GB/s{failed}"


def print_size(r: dict, modes: list[Mode]) -> None:
    print(f"{r['tokens']} tokens, {r['payload_bytes'] / 2**20:.0f} MiB, median of {r['repeats']}")
    for mode in modes:
        row = r["modes"][mode.name]
        ratio = row["mooncake_over_zmq"]
        print(
            f"  {mode_label(mode):>18}: zmq {cell(row['zmq'])} | mooncake {cell(row['mooncake'])}"
            f" | mooncake/zmq {f'{ratio:.2f}x' if ratio else '-'}"
        )
    for name, checks in r["byte_exact"].items():
        print(f"  byte-exact ({name}): " + ", ".join(f"{t} {v}" for t, v in checks.items()))
    for what, err in r["errors"].items():
        print(f"  {what} failed: {err[:200]}")


# ----- end to end ---------------------------------------------------------------------------------------
@dataclass
class Pair:
    """One prefill and one decode worker, one config."""

    name: str
    prefill: ServiceProcess
    decode: ServiceProcess
    client: DisaggClient

    @property
    def target(self) -> DecodeTarget:
        return DecodeTarget(self.decode.info["kv"], self.decode.info["control"])

    def stop(self) -> None:
        self.client.close()
        self.decode.stop()
        self.prefill.stop()


def e2e_checkpoint(layers: int) -> Path:
    spec = TinySpec(
        num_hidden_layers=layers, hidden_size=256, num_attention_heads=KV_HEADS,
        num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM, num_experts=8, num_experts_per_tok=2,
        moe_intermediate_size=48,
    )  # fmt: skip
    return cached_tiny_checkpoint(Path("/tmp/kv-bench-checkpoints"), spec=spec)


def start_pair(ckpt: Path, transfer: str, pipeline: bool, tokens: int, dtype: str) -> Pair:
    blocks = str(blocks_for(tokens + 64) + 8)
    common = (
        "--torch-threads", "1", "--dtype", dtype, "--http-port", "0", "--num-blocks", blocks,
        "--max-model-len", str(tokens + 64), "--kv-transfer", transfer,
    )  # fmt: skip
    flag = "--kv-pipeline" if pipeline else "--no-kv-pipeline"
    prefill = start_service("services.prefill", ckpt, *common, flag, "--port", "0", "--inbox-port", "0")
    try:
        client = DisaggClient(
            prefill.info["zmq"], prefill.info["inbox"], None, 1012, 2, heartbeat_timeout_s=600
        )
        decode = start_service(
            "services.decode", ckpt, *common, "--no-compile-decode", "--port", "0", "--kv-port", "0",
            "--report-to", client.reply_to, "--transfer-timeout-s", str(TRANSFER_TIMEOUT_S),
        )  # fmt: skip
    except BaseException:
        prefill.stop()
        raise
    return Pair(f"{transfer} {'pipelined' if pipeline else 'unpipelined'}", prefill, decode, client)


def prompt_ids(seed: int, tokens: int) -> list[int]:
    return torch.randint(0, 1000, (tokens,), generator=torch.Generator().manual_seed(seed)).tolist()


class PromptFailed(RuntimeError):
    pass


def run_prompt(pair: Pair, rid: str, ids: list[int], timeout: float) -> tuple[float, float]:
    """(TTFT, first -> second token) of one request, as the router sees them."""
    params = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
    pair.client.submit(rid, ids, [], params, pair.target, timeout_s=timeout)
    o = pair.client.collect(timeout)[rid]
    if o.error is not None or len(o.tokens) != 2:
        why = o.error.message if o.error else f"{len(o.tokens)} tokens in {timeout:.0f} s"
        raise PromptFailed(
            f"{pair.name} {rid}: {why} (logs: {pair.prefill.log_path}, {pair.decode.log_path})"
        )
    return o.token_times[0] - o.submitted, o.token_times[1] - o.token_times[0]


METRICS = {  # (service, counter) read before and after the timed prompts
    "kv_bytes_sent": ("prefill", "prefill_kv_bytes_sent_total"),
    "decode_kv_bytes_copied": ("decode", "decode_kv_bytes_copied_total"),
    "decode_handoff_s_sum": ("decode", "decode_handoff_seconds_sum"),
    "decode_handoffs": ("decode", "decode_handoff_seconds_count"),
}


def counters(pair: Pair) -> dict[str, float]:
    return {k: getattr(pair, proc).metric(name) for k, (proc, name) in METRICS.items()}


def pair_result(ttft: list[float], gap: list[float], before: dict, after: dict, errors: list[str]) -> dict:
    n = len(ttft)
    delta = {k: after[k] - before[k] for k in METRICS}
    return {
        "ttft_median_s": statistics.median(ttft) if n else None,
        "gap_median_s": statistics.median(gap) if n else None,
        "ttft_s": ttft, "gap_s": gap, "errors": errors,
        "kv_bytes_per_prompt": delta["kv_bytes_sent"] / max(n, 1),
        "decode_kv_bytes_copied_per_prompt": delta["decode_kv_bytes_copied"] / max(n, 1),
        "decode_handoff_mean_s": delta["decode_handoff_s_sum"] / max(delta["decode_handoffs"], 1),
    }  # fmt: skip


def timed_prompts(pairs: list[Pair], tokens: int, prompts: int, timeout: float) -> dict[str, dict]:
    """The same prompts to every pair, alternating the order; failures recorded, not raised."""
    got: dict[str, dict] = {p.name: {"ttft": [], "gap": [], "errors": []} for p in pairs}
    for i in range(prompts):
        for p in pairs if i % 2 == 0 else pairs[::-1]:
            try:
                ttft, gap = run_prompt(p, f"p{i}", prompt_ids(i, tokens), timeout)
            except PromptFailed as e:
                got[p.name]["errors"].append(str(e))
                print(f"  {p.name:<20} prompt {i}: FAILED {e}", flush=True)
                continue
            got[p.name]["ttft"].append(ttft)
            got[p.name]["gap"].append(gap)
            print(
                f"  {p.name:<20} prompt {i}: TTFT {ttft:7.2f} s, token 1 -> 2 {1000 * gap:8.1f} ms",
                flush=True,
            )
    return got


def end_to_end(transfers: list[str], tokens: int, prompts: int, layers: int, dtype: str) -> dict:
    """For each transfer, pipelined and unpipelined pairs side by side, prompts alternating."""
    ckpt = e2e_checkpoint(layers)
    timeout = max(600.0, tokens * layers / 100)
    results = {}
    for transfer in transfers:
        pairs = []
        try:
            for pipeline in (True, False):
                pairs.append(start_pair(ckpt, transfer, pipeline, tokens, dtype))
            for p in pairs:  # warm-up: first-call costs out of the way
                run_prompt(p, "warmup", prompt_ids(999, 64), timeout)
            before = {p.name: counters(p) for p in pairs}
            got = timed_prompts(pairs, tokens, prompts, timeout)
            for p in pairs:
                g = got[p.name]
                results[p.name] = pair_result(g["ttft"], g["gap"], before[p.name], counters(p), g["errors"])
        finally:
            for p in pairs:
                p.stop()
    return results


def print_e2e(results: dict, tokens: int, dtype: str) -> None:
    print(f"\nend to end, {tokens}-token prompts, {dtype} KV, median over prompts")
    print(f"  {'config':<22}{'TTFT s':>9}{'token 1->2 ms':>15}{'decode handoff ms':>19}{'KV MiB/prompt':>15}")
    for name, r in results.items():
        if r["ttft_median_s"] is None:
            print(f"  {name:<22}{'all prompts failed':>38}")
            continue
        failed = f"  ({len(r['errors'])} failed)" if r["errors"] else ""
        print(
            f"  {name:<22}{r['ttft_median_s']:9.2f}{1000 * r['gap_median_s']:15.1f}"
            f"{1000 * r['decode_handoff_mean_s']:19.1f}{r['kv_bytes_per_prompt'] / 2**20:15.0f}{failed}"
        )
    for transfer in TRANSPORTS:
        on, off = results.get(f"{transfer} pipelined"), results.get(f"{transfer} unpipelined")
        if on and off and on["ttft_median_s"] and off["ttft_median_s"]:
            print(
                f"  {transfer}: pipelining changes TTFT x{on['ttft_median_s'] / off['ttft_median_s']:.2f}, "
                f"token 1->2 x{on['gap_median_s'] / off['gap_median_s']:.2f}"
            )


# ----- main -------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 32768], help="prompt tokens (transport)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repeats per size")
    ap.add_argument("--long-repeats", type=int, default=2, help="repeats for sizes above 8k tokens")
    ap.add_argument("--pieces", type=int, default=8, help="sends of the 'pieces' mode (1: skip it)")
    ap.add_argument("--skip-modes", nargs="*", default=[], choices=("whole", "pieces", "scattered"))
    ap.add_argument("--e2e-tokens", type=int, default=8192)
    ap.add_argument("--e2e-prompts", type=int, default=3)
    ap.add_argument("--e2e-layers", type=int, default=LAYERS)
    ap.add_argument("--e2e-dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--transfers", nargs="+", default=list(TRANSPORTS), choices=TRANSPORTS)
    ap.add_argument("--skip-transport", action="store_true")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    result: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    started = time.perf_counter()
    if not args.skip_transport:
        print(f"transport: {LAYERS} layers x K,V x {KV_HEADS} x {HEAD_DIM} bf16, block {BLOCK}, tcp loopback")
        modes = [Mode("whole"), Mode("pieces", args.pieces), Mode("scattered", scattered=True)]
        modes = [m for m in modes if m.name not in args.skip_modes and (m.pieces > 1 or m.name != "pieces")]
        result["transport"] = transport_comparison(args.sizes, args.repeats, args.long_repeats, modes)
    if not args.skip_e2e:
        print(f"\nend to end: {args.e2e_tokens}-token prompts, {args.e2e_prompts} per config", flush=True)
        e2e = end_to_end(args.transfers, args.e2e_tokens, args.e2e_prompts, args.e2e_layers, args.e2e_dtype)
        result["e2e"] = {"tokens": args.e2e_tokens, "dtype": args.e2e_dtype, "configs": e2e}
        print_e2e(e2e, args.e2e_tokens, args.e2e_dtype)
    result["wall_s"] = time.perf_counter() - started
    print(f"\n{result['wall_s']:.0f} s in all")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
