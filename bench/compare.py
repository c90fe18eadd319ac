"""``python -m bench.compare``: the same load against three serving setups, one after another, with ratios.

    python -m bench.compare --model shared/assets/demo --num-requests 64 --concurrency 8 --images 1 \\
        --image-size 224x224 --max-tokens 32 --warmup 4 --request-rates 1,2,4,8 \\
        --out compare.json --plots plots/

Setups (``--setups``, in this order):
  cluster       ``epd up``: encoders, prefill and decode workers and the router (``--cluster-flags``)
  colocated     ``epd up --colocated``: the whole model and one engine in the router's process
  transformers  ``bench.hf_server``: transformers' ``generate``, one request at a time

Life cycle, per setup: start its server (``bench/servers.py``; never two at once, so that they do
not share the cores) -> the closed-loop run at ``--concurrency`` (``shared.loadgen``, ``--warmup``
requests first) -> for the setups in ``--sweep-setups``, a Poisson sweep over ``--request-rates`` on
the same server -> stop it. Every setup gets the identical ``LoadConfig`` (same seed: the same
prompts and the same distinct images), and every server process the same ``--dtype`` and
``--torch-threads``. Then: a table per setup, ratios between setups (throughputs: above 1 the first
is better; latency medians: below 1 the first is faster), the stage breakdown (p50/p99 of each
stage of the answers' ``timeline``, per setup side by side; only setups whose server sends one:
cluster and colocated, not transformers), the JSON (``config``, ``environment``, ``setups``:
loadgen reports, ``ratios``, ``stages``, ``sweep``, ``errors``) and plots (both in
``bench/compare_report.py``).

Exit status: 0; 1 when a server did not start or a run completed no request (failed requests are
counted in the reports, not raised).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from bench.compare_report import render
from bench.servers import Server, ServerError, serve
from shared.assets import DEMO_MODEL_DIR as DEMO_MODEL
from shared.loadgen import LoadConfig, run
from shared.loadgen.metrics import stage_order
from shared.loadgen.runner import environment, jsonable

SETUPS = ("cluster", "colocated", "transformers")
PAIRS = (("cluster", "colocated"), ("cluster", "transformers"), ("colocated", "transformers"))
# ratio key -> (report figure, statistic); throughputs first, then latency medians
RATIO_FIGURES = {
    "request_throughput": ("request_throughput", None),
    "output_token_throughput": ("output_token_throughput", None),
    "ttft_p50": ("ttft_ms", "p50"),
    "tpot_p50": ("tpot_ms", "p50"),
    "e2e_p50": ("e2e_ms", "p50"),
}


@dataclass(frozen=True)
class CompareConfig:
    model: Path
    setups: tuple[str, ...] = SETUPS
    sweep_setups: tuple[str, ...] = ("cluster", "colocated")
    num_requests: int = 64
    concurrency: int = 8
    images: str = "1"
    image_size: str = "224x224"
    image_format: str = "png"  # png or jpeg (vllm bench serve sends JPEG)
    videos: str = "0"
    video_frames: int = 16
    video_size: str = "224x224"
    prompt_words: str = "20"
    max_tokens: str = "32"
    ignore_eos: bool = True
    temperature: float = 0.0  # 0: greedy; vllm bench serve sends none, which servers take as 1
    warmup: int = 4
    request_rates: tuple[float, ...] = ()
    dtype: str = "float32"
    torch_threads: int = 1  # per server process
    cluster_flags: tuple[str, ...] = ("--encoders", "1", "--prefills", "1", "--decodes", "1")
    colocated_flags: tuple[str, ...] = ()
    transformers_flags: tuple[str, ...] = ()
    seed: int = 0
    request_timeout: float = 600.0
    start_timeout: float = 300.0
    log_dir: Path | None = None  # None: a fresh temporary directory
    out: str | None = None
    plots: str | None = None
    progress: bool = True

    @property
    def order(self) -> tuple[str, ...]:
        """Every setup to start, once each: the measured ones, then those only swept."""
        swept = self.sweep_setups if self.request_rates else ()
        return tuple(s for s in SETUPS if s in self.setups or s in swept)

    def load(self, base_url: str, **shape: object) -> LoadConfig:
        return LoadConfig(
            base_url=base_url, num_requests=self.num_requests, seed=self.seed, images=self.images,
            image_size=self.image_size, image_format=self.image_format, videos=self.videos, video_frames=self.video_frames,
            video_size=self.video_size, prompt_words=self.prompt_words, max_tokens=self.max_tokens,
            ignore_eos=self.ignore_eos, temperature=self.temperature, timeout=self.request_timeout,
            progress=self.progress, **shape,  # type: ignore[arg-type]
        )  # fmt: skip

    def server(self, name: str, log_dir: Path) -> Server:
        common = (
            "--model",
            str(self.model),
            "--dtype",
            self.dtype,
            "--torch-threads",
            str(self.torch_threads),
        )
        if name == "transformers":
            cmd = ("bench.hf_server", *common, "--port", "0", *self.transformers_flags)
            return Server(name, (sys.executable, "-m", *cmd), timeout=self.start_timeout)
        up = ("router.cli", "up", *common, "--base-port", "0", "--port", "0", "--log-dir", str(log_dir))
        extra = ("--colocated", *self.colocated_flags) if name == "colocated" else self.cluster_flags
        cmd = (*up, "--start-timeout", str(self.start_timeout), *extra)
        return Server(name, (sys.executable, "-m", *cmd), "cluster ready", self.start_timeout + 30)


def _figure(run: dict, key: str) -> float | None:
    name, stat = RATIO_FIGURES[key]
    return run[name] if stat is None else run[name][stat]


def ratios(setups: dict[str, dict]) -> dict[str, dict[str, float | None]]:
    """``"a/b"`` -> figure -> a's value over b's, for each pair in ``PAIRS`` that was measured."""
    out = {}
    for a, b in PAIRS:
        if a in setups and b in setups:
            ra, rb = setups[a]["runs"][0], setups[b]["runs"][0]
            pairs = {k: (_figure(ra, k), _figure(rb, k)) for k in RATIO_FIGURES}
            out[f"{a}/{b}"] = {k: x / y if x is not None and y else None for k, (x, y) in pairs.items()}
    return out


def stage_breakdown(stages: dict[str, dict[str, dict]]) -> dict[str, dict[str, dict | None]]:
    """setup -> its run's ``stages_ms`` (stage -> statistics) => stage -> setup -> {count, p50, p99} (ms),
    or None where that setup did not report the stage. Stages in the timeline's order; setups in
    the given order, those without any stage (no timeline: transformers, older servers) left out."""
    with_stages = {name: per_stage for name, per_stage in stages.items() if per_stage}
    names = stage_order({stage for per_stage in with_stages.values() for stage in per_stage})
    return {
        stage: {
            name: None if (s := per_stage.get(stage)) is None else {k: s[k] for k in ("count", "p50", "p99")}
            for name, per_stage in with_stages.items()
        }
        for stage in names
    }


def machine() -> dict:
    """Where the numbers come from: the loadgen's environment plus CPU model and torch version."""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    try:
        torch = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch = None
    return {**environment(), "hostname": environment()["host"], "cpu_model": cpu, "torch": torch}


def _measure(cfg: CompareConfig, name: str, log_dir: Path, reports: dict, sweeps: dict, ready: dict) -> None:
    start = time.perf_counter()
    with serve(cfg.server(name, log_dir / name), log_dir / name) as url:
        ready[name] = time.perf_counter() - start  # launch to ready: what a user waits for
        print(f"{name}: serving at {url}, ready in {ready[name]:.1f} s", flush=True)
        if name in cfg.setups:
            reports[name] = run(cfg.load(url, concurrency=cfg.concurrency, warmup=cfg.warmup))
        if name in cfg.sweep_setups and cfg.request_rates:
            warmup = 0 if name in cfg.setups else cfg.warmup  # warm already after the closed-loop run
            sweeps[name] = run(cfg.load(url, request_rate=cfg.request_rates, warmup=warmup))


def compare(cfg: CompareConfig) -> dict:
    """Start each setup in turn, measure it, stop it; returns the whole result (JSON-ready)."""
    log_dir = cfg.log_dir or Path(tempfile.mkdtemp(prefix="compare-"))
    print(f"server logs in {log_dir}", flush=True)
    reports: dict[str, dict] = {}
    sweeps: dict[str, dict] = {}
    ready: dict[str, float] = {}
    errors: dict[str, str] = {}
    for name in cfg.order:
        try:
            _measure(cfg, name, log_dir, reports, sweeps, ready)
        except (ServerError, httpx.HTTPError) as e:  # the report counts failed requests; these are worse
            print(f"compare: {name}: {e}", file=sys.stderr, flush=True)
            errors[name] = str(e).splitlines()[0]
    config = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
    result = {
        "config": config | {"log_dir": str(log_dir)},
        "environment": machine(),
        "setups": reports,
        "ratios": ratios(reports),
        "stages": stage_breakdown({name: r["runs"][0].get("stages_ms", {}) for name, r in reports.items()}),
        "sweep": sweeps,
        "ready_seconds": ready,
        "errors": errors,
    }
    return jsonable(result)  # type: ignore[return-value]


def _flags(text: str) -> tuple[str, ...]:
    return tuple(shlex.split(text))


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if unknown := set(names) - set(SETUPS):
        raise argparse.ArgumentTypeError(f"unknown setups {sorted(unknown)}; known: {', '.join(SETUPS)}")
    return names


def parse_args(argv: Sequence[str] | None = None) -> CompareConfig:
    d = CompareConfig(model=DEMO_MODEL)
    p = argparse.ArgumentParser(
        prog="python -m bench.compare",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        epilog="flags strings starting with '--' and without a space need '=': --cluster-flags=--decodes=2",
    )
    p.add_argument("--model", type=Path, default=d.model, help="checkpoint directory (default: the demo)")
    p.add_argument(
        "--setups", type=_names, default=d.setups, help="comma-separated, from " + ",".join(SETUPS)
    )
    p.add_argument("--num-requests", type=int, default=d.num_requests)
    p.add_argument("--concurrency", type=int, default=d.concurrency, help="closed loop: requests in flight")
    p.add_argument("--images", default=d.images, help="images per request (loadgen distribution)")
    p.add_argument("--image-size", default=d.image_size)
    p.add_argument("--image-format", choices=("png", "jpeg"), default=d.image_format)
    p.add_argument("--videos", default=d.videos, help="videos per request (loadgen distribution)")
    p.add_argument("--video-frames", type=int, default=d.video_frames, help="frames per synthetic video")
    p.add_argument("--video-size", default=d.video_size)
    p.add_argument("--prompt-words", default=d.prompt_words)
    p.add_argument("--max-tokens", default=d.max_tokens)
    p.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=d.ignore_eos)
    p.add_argument(
        "--temperature", type=float, default=d.temperature,
        help="sampling temperature (default 0, greedy; vllm bench serve's requests sample at the server's default, 1)",
    )  # fmt: skip
    p.add_argument("--warmup", type=int, default=d.warmup, help="unmeasured requests before each setup's run")
    p.add_argument("--request-rates", default="", help="Poisson sweep, requests/s, e.g. 0.5,1,2")
    p.add_argument(
        "--sweep-setups",
        type=_names,
        default=d.sweep_setups,
        help="setups the sweep runs against (default cluster,colocated)",
    )
    p.add_argument("--dtype", default=d.dtype)
    p.add_argument("--torch-threads", type=int, default=d.torch_threads, help="per server process")
    p.add_argument(
        "--cluster-flags",
        type=_flags,
        default=d.cluster_flags,
        help="flags for epd up (default: --encoders 1 --prefills 1 --decodes 1)",
    )
    p.add_argument("--colocated-flags", type=_flags, default=d.colocated_flags, help="for epd up --colocated")
    p.add_argument(
        "--transformers-flags", type=_flags, default=d.transformers_flags, help="for bench.hf_server"
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--request-timeout", type=float, default=d.request_timeout, help="seconds per request")
    p.add_argument(
        "--start-timeout", type=float, default=d.start_timeout, help="seconds for a server to start"
    )
    p.add_argument("--log-dir", type=Path, help="server logs (default: a temporary directory)")
    p.add_argument("--out", help="write the JSON here")
    p.add_argument("--plots", help="write PNG plots into this directory")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    rates = tuple(float(r) for r in a.request_rates.split(",") if r.strip())
    cfg = CompareConfig(
        model=a.model.resolve(), setups=a.setups, sweep_setups=a.sweep_setups, num_requests=a.num_requests,
        concurrency=a.concurrency, images=a.images, image_size=a.image_size, image_format=a.image_format, videos=a.videos,
        video_frames=a.video_frames, video_size=a.video_size, prompt_words=a.prompt_words,
        max_tokens=a.max_tokens, ignore_eos=a.ignore_eos, temperature=a.temperature, warmup=a.warmup, request_rates=rates,
        dtype=a.dtype, torch_threads=a.torch_threads, cluster_flags=a.cluster_flags,
        colocated_flags=a.colocated_flags, transformers_flags=a.transformers_flags, seed=a.seed,
        request_timeout=a.request_timeout, start_timeout=a.start_timeout, log_dir=a.log_dir, out=a.out,
        plots=a.plots, progress=not a.no_progress,
    )  # fmt: skip
    try:
        cfg.load("http://x/v1", concurrency=cfg.concurrency, warmup=cfg.warmup)  # bad specs fail here
    except ValueError as e:
        p.error(str(e))
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    result = compare(cfg)
    print(render(result))
    if cfg.out:
        with open(cfg.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {cfg.out}")
    if cfg.plots:
        from bench.compare_report import write_plots  # matplotlib only when plots are asked for

        for path in write_plots(result, cfg.plots):
            print(f"wrote {path}")
    reports = [*result["setups"].values(), *result["sweep"].values()]
    empty = any(not run["completed"] for report in reports for run in report["runs"])
    return 1 if result["errors"] or empty else 0


if __name__ == "__main__":
    sys.exit(main())
