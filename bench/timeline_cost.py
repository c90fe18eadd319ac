"""``python -m bench.timeline_cost``: the CPU time the request timeline adds to one request, with
tracing off, measured piece by piece on the real code.

Throughput A/B runs on a shared machine move by several percent between runs of the same code
(``bench.ab``), more than the effect looked for. This script times instead exactly what the
timeline added, per request of the ``bench.ab`` load (one image, ``--tokens`` tokens), in each process:

- router: the ``RequestTiming`` of a request (its clock, two stamps, the trace context of the
  encode and prefill messages, the workers' stamps added as tokens come, ``finish``: critical path,
  histograms, report) and the ``timeline`` field serialized into the response;
- workers: each pins the request's clock, stamps its stages, observes them in its histogram and
  hands them to the (disabled) tracer; decode looks up the request's timing at every token;
- the wire: the ``TraceContext`` on the encode, prefill and KV-reservation messages and the stamps
  on the embedding result and on the first and last token records, encoded and decoded (the cost
  with them minus the cost of the same messages without).

It prints microseconds per request for each piece and their sum; divide by the CPU milliseconds
per request that ``bench.ab`` prints for the whole cluster to get the share of throughput at stake.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence

import torch
from prometheus_client import CollectorRegistry

from router.metrics import RouterMetrics
from router.timing import RequestTiming
from shared.timeline import RequestClock, Service, StageName, Tracer, observe, stage_histogram
from shared.wire import EncodeRequest, ImageEmbeddingResult, ImageInput, decode, encode
from shared.wire.messages import SequenceTokens, StageStamp, TokenBatch, TraceContext

S = StageName
ENCODER_STAGES = (S.ENCODE_QUEUE, S.VISION)
PREFILL_STAGES = (S.EMBEDDING_WAIT, S.PREFILL_QUEUE, S.PREFILL)
DECODE_STAGES = (S.KV_WAIT, S.KV_TRANSFER, S.DECODE_QUEUE)


def per_call_us(fn: Callable[[], object], seconds: float) -> float:
    """Mean microseconds of ``fn()``, called for about ``seconds`` after a warm-up."""
    for _ in range(20):
        fn()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(50):
            fn()
        n += 50
    return 1e6 * elapsed / n


def router_request(metrics: RouterMetrics, tracer: Tracer, tokens: int) -> None:
    clock = RequestClock.here()
    t = RequestTiming(clock, tracer, "chat")
    t.stamp(S.PREPROCESS, clock.mono)
    t.stamp(S.ADMISSION, time.monotonic())
    t.trace(), t.trace()  # the prefill request's and the encode request's
    now = clock.now()
    t.add([StageStamp(s.value, now, 0.001) for s in (*ENCODER_STAGES, *PREFILL_STAGES)])
    t.add([StageStamp(s.value, now, 0.001) for s in DECODE_STAGES])
    for _ in range(tokens - 2):
        t.add([])
    t.add([StageStamp(S.DECODE.value, now, 0.01)])
    json.dumps({"timeline": t.finish(metrics, "chatcmpl-1")}, separators=(",", ":"))


def worker_request(tokens: int) -> None:
    """The three workers' share of one request (each in its own process in the cluster)."""
    trace = TraceContext("", time.time())
    for stages, hist in (
        (ENCODER_STAGES, ENCODER_HIST),
        (PREFILL_STAGES, PREFILL_HIST),
        (DECODE_STAGES, DECODE_HIST),
    ):
        clock = RequestClock.received(trace)
        start = time.monotonic()
        stamps = [clock.stamp(s, start) for s in stages]
        observe(hist, stamps)
        TRACER.export("", "chatcmpl-1", stamps)
    timing = {"chatcmpl-1": clock}
    for _ in range(tokens):
        timing.get("chatcmpl-1")
    DECODE_HIST.labels(S.DECODE.value).observe(0.01)


REGISTRY = CollectorRegistry()
ENCODER_HIST, PREFILL_HIST, DECODE_HIST = (
    stage_histogram(s, REGISTRY) for s in ("encoder", "prefill", "decode")
)
TRACER = Tracer(Service.DECODE)  # no endpoint: what every worker has with tracing off


def wire_messages(traced: bool) -> list:
    trace = TraceContext("", time.time()) if traced else None
    now = time.time()
    stamps = (lambda stages: [StageStamp(s.value, now, 0.001) for s in stages]) if traced else (lambda _: [])
    # the same TraceContext rides on the encode, prefill and KV-reservation messages: an
    # EncodeRequest stands in for each of the three
    ask = EncodeRequest(
        "chatcmpl-1", [ImageInput(0, "a" * 64, b"x" * 64)], "tcp://127.0.0.1:7001", now + 60, trace
    )
    return [
        ask, ask, ask,
        ImageEmbeddingResult(
            "chatcmpl-1", 0, "a" * 64, (1, 16, 16), torch.zeros(64, 8), torch.zeros(2, 64, 8),
            source="encoder-0", stamps=stamps(ENCODER_STAGES),
        ),
        TokenBatch("prefill-0", [SequenceTokens("chatcmpl-1", [5], stamps=stamps((*ENCODER_STAGES, *PREFILL_STAGES)))]),
        TokenBatch("decode-0", [SequenceTokens("chatcmpl-1", [6], stamps=stamps(DECODE_STAGES))]),
        TokenBatch("decode-0", [SequenceTokens("chatcmpl-1", [7], stamps=stamps((S.DECODE,)))]),
    ]  # fmt: skip


def round_trip(msgs: list) -> Callable[[], None]:
    def run() -> None:
        for m in msgs:
            decode(encode(m))

    return run


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.timeline_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=32, help="tokens per request (the bench.ab load's)")
    p.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    metrics, tracer = RouterMetrics(), Tracer(Service.ROUTER)
    rows = {
        "router: RequestTiming, finish, timeline field": per_call_us(
            lambda: router_request(metrics, tracer, args.tokens), args.seconds
        ),
        "workers: clocks, stamps, histograms, tracer": per_call_us(
            lambda: worker_request(args.tokens), args.seconds
        ),
    }
    with_trace = per_call_us(round_trip(wire_messages(True)), args.seconds)
    without = per_call_us(round_trip(wire_messages(False)), args.seconds)
    rows["wire: trace contexts and stamps (encode + decode)"] = with_trace - without
    print(f"timeline CPU per request ({args.tokens} tokens, 1 image, tracing off):")
    for name, us in rows.items():
        print(f"  {name:52s} {us:8.1f} us")
    print(f"  {'total':52s} {sum(rows.values()):8.1f} us")
    print(f"  (the wire messages themselves: {without:.1f} us without, {with_trace:.1f} us with)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
