"""``epd loadgen`` (or ``python -m shared.loadgen``): argparse -> ``LoadConfig`` -> ``run`` -> summary table on stdout."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import httpx

from shared.extras import MissingExtra
from shared.loadgen.config import SLO_METRICS, LoadConfig
from shared.loadgen.runner import run
from shared.loadgen.table import summary_table

EXAMPLES = """\
examples:
  closed-loop sweep, unique 448x448 images, fixed output length, goodput under SLOs:
    epd loadgen --concurrency 1,4,16 --num-requests 200 --warmup 8 --image-size 448x448 \\
        --max-tokens 64 --ignore-eos --slo ttft:500 tpot:50 --out report.json --plots plots/
  Poisson sweep with mixed image counts and sizes:
    epd loadgen --request-rate 1,2,4,inf --max-concurrency 64 --images 0:0.2,1:0.6,3:0.2 \\
        --image-size 224x224:3,896x896:1 --prompt-words 10-40 --max-tokens 16-128
  one unique 16-frame 224x224 MP4 per request (4 fps source), no image; then each video used 4 times:
    epd loadgen --concurrency 4 --images 0 --videos 1 --video-frames 16 --video-size 224x224 \\
        --video-fps 4 --max-tokens 32
    epd loadgen --concurrency 4 --images 0 --videos 1 --video-repeat 4

metrics: TTFT to the first content chunk; ITL between content chunks; TPOT per request
(E2E - TTFT) / (output tokens - 1); percentiles over completed requests; goodput counts the
requests meeting every SLO; stages: p50/p99 of each stage of the answers' timeline (epd's
router sends one; other servers: no stage rows). Details: shared/loadgen/metrics.py.
"""


def parse_slo(items: Sequence[str]) -> dict[str, float]:
    """``["ttft:500", "tpot:50"]`` -> {"ttft": 500.0, "tpot": 50.0} (milliseconds)."""
    slo = {}
    for item in items:
        key, sep, value = item.partition(":")
        if not sep or key not in SLO_METRICS:
            raise ValueError(f"--slo {item!r}: expected METRIC:MS with METRIC in {', '.join(SLO_METRICS)}")
        slo[key] = float(value)
    return slo


def build_parser() -> argparse.ArgumentParser:
    d = LoadConfig()
    p = argparse.ArgumentParser(
        prog="epd loadgen",
        description="Load generator for OpenAI-compatible multimodal chat endpoints (streaming).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--base-url", default=d.base_url, help="API root including /v1 (default %(default)s)")
    p.add_argument("--model", help="model name (default: the first one GET /models lists)")
    p.add_argument("--api-key", help="sent as 'Authorization: Bearer KEY'")
    p.add_argument(
        "--timeout", type=float, default=d.timeout, help="seconds per request (default %(default)s)"
    )
    load = p.add_argument_group("load shape (one run per value; several values make a sweep)")
    shape = load.add_mutually_exclusive_group()
    shape.add_argument("--concurrency", help="closed loop with N requests in flight, e.g. 4 or 1,2,4,8")
    shape.add_argument(
        "--request-rate", help="Poisson arrivals in requests/s, e.g. 2 or 1,2,4,inf (inf: all at once)"
    )
    load.add_argument("--max-concurrency", type=int, help="cap on requests in flight with --request-rate")
    load.add_argument(
        "--num-requests", type=int, default=d.num_requests, help="per run (default %(default)s)"
    )
    load.add_argument("--warmup", type=int, default=0, help="requests sent first and not measured")
    load.add_argument("--seed", type=int, default=0)
    wl = p.add_argument_group("workload (V | A-B uniform | V1,V2 | V1:w1,V2:w2 weighted)")
    wl.add_argument("--images", default=d.images, help="images per request, e.g. 1 or 0:0.2,1:0.6,3:0.2")
    wl.add_argument(
        "--image-size", default=d.image_size, help="WxH or weighted list, e.g. 224x224:3,448x448:1"
    )
    wl.add_argument("--image-format", choices=("png", "jpeg"), default=d.image_format)
    wl.add_argument(
        "--image-repeat", type=int, default=1, help="uses of each distinct image (1: all distinct)"
    )
    wl.add_argument(
        "--videos", default=d.videos, help="synthetic MP4 videos per request, after the images (default 0)"
    )
    wl.add_argument(
        "--video-frames", type=int, default=d.video_frames, help="frames per video (default %(default)s)"
    )
    wl.add_argument(
        "--video-size",
        default=d.video_size,
        help="WxH or weighted list, as --image-size (default %(default)s)",
    )
    wl.add_argument(
        "--video-fps",
        type=float,
        default=d.video_fps,
        help="the video files' frame rate (default %(default)s)",
    )
    wl.add_argument(
        "--video-repeat", type=int, default=1, help="uses of each distinct video (1: all distinct)"
    )
    wl.add_argument(
        "--prompt-words", default=d.prompt_words, help="random words per prompt, e.g. 20 or 10-40"
    )
    wl.add_argument("--max-tokens", default=d.max_tokens, help="output length cap, e.g. 32 or 16-64")
    wl.add_argument("--ignore-eos", action="store_true", help="send ignore_eos: true (vLLM, SGLang, epd)")
    wl.add_argument("--temperature", type=float, default=d.temperature)
    out = p.add_argument_group("output")
    out.add_argument(
        "--slo", nargs="*", default=[], metavar="METRIC:MS", help="goodput SLOs, e.g. ttft:500 tpot:50"
    )
    out.add_argument("--out", help="write the JSON report here")
    out.add_argument("--plots", help="write PNG plots into this directory")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    out.add_argument("--no-records", action="store_true", help="leave per-request records out of the JSON")
    return p


def config_from_args(argv: Sequence[str] | None = None) -> LoadConfig:
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        return LoadConfig(
            base_url=a.base_url, model=a.model, api_key=a.api_key, timeout=a.timeout,
            concurrency=a.concurrency, request_rate=a.request_rate, max_concurrency=a.max_concurrency,
            num_requests=a.num_requests, warmup=a.warmup, seed=a.seed, images=a.images,
            image_size=a.image_size, image_format=a.image_format, image_repeat=a.image_repeat,
            videos=a.videos, video_frames=a.video_frames, video_size=a.video_size, video_fps=a.video_fps,
            video_repeat=a.video_repeat,
            prompt_words=a.prompt_words, max_tokens=a.max_tokens, ignore_eos=a.ignore_eos,
            temperature=a.temperature, slo=parse_slo(a.slo), out=a.out, plots=a.plots,
            progress=not a.no_progress, keep_records=not a.no_records,
        )  # fmt: skip
    except ValueError as e:
        parser.error(str(e))


def main(argv: Sequence[str] | None = None) -> int:
    cfg = config_from_args(argv)
    try:
        report = run(cfg)
    except MissingExtra as e:  # --plots without matplotlib: said before any request is sent
        print(f"epd loadgen: {e}", file=sys.stderr)
        return 2
    except httpx.HTTPError as e:  # only the model lookup can raise; requests fail into records
        print(f"cannot list models at {cfg.base_url}/models: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(summary_table(report))
    for path in [cfg.out, *report.get("plots", [])]:
        if path:
            print(f"wrote {path}")
    return 0 if all(r["completed"] for r in report["runs"]) else 1  # 1: some run completed nothing


if __name__ == "__main__":
    sys.exit(main())
