"""``LoadConfig``: every option of one load-generator invocation, built once (CLI or caller).

Distribution knobs stay as their spec strings (so the report's ``config`` shows what was asked);
the parsed ``Dist`` objects and the list of runs are derived properties.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from shared.loadgen.dists import Dist, parse_dist, parse_size

SLO_METRICS = ("ttft", "tpot", "e2e")


def _floats(value: float | str | Sequence[float] | None) -> tuple[float, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(float(v) for v in value.split(",") if v.strip())  # float("inf") works
    if isinstance(value, int | float):
        return (float(value),)
    return tuple(float(v) for v in value)


@dataclass
class LoadConfig:
    """One benchmark: a run per concurrency level or per request rate, on the same workload recipe."""

    base_url: str = "http://127.0.0.1:8000/v1"  # up to and including /v1
    model: str | None = None  # None: the first model GET /models lists
    api_key: str | None = None
    timeout: float = 600.0  # seconds per request, the whole stream

    # Load shape: closed loop at N in flight, or open loop with Poisson arrivals (several values: a sweep).
    concurrency: int | str | Sequence[int] | None = None
    request_rate: float | str | Sequence[float] | None = None  # requests/s; inf: all at once
    max_concurrency: int | None = None  # cap on requests in flight in Poisson mode
    num_requests: int = 100  # per run
    warmup: int = 0  # requests before the first run, not measured
    seed: int = 0

    # Workload.
    images: str | int = "1"  # images per request: "1", "0:0.2,1:0.6,3:0.2"
    image_size: str = "224x224"  # "224x224" or "224x224:0.5,448x448:0.5"
    image_format: str = "png"  # png or jpeg
    image_repeat: int = 1  # each distinct image used this many times (1: all distinct)
    videos: str | int = "0"  # videos per request, same spec forms as images; after the images
    video_frames: int = 16  # frames per synthetic video
    video_size: str = "224x224"  # "224x224" or weighted sizes, as image_size
    video_fps: float = 4.0  # the synthetic file's frame rate (the server samples it at its own rate)
    video_repeat: int = 1  # each distinct video used this many times (1: all distinct)
    prompt_words: str | int = "20"  # "20" or "10-40"
    max_tokens: str | int = "32"  # "32" or "16-64"
    ignore_eos: bool = False
    temperature: float = 0.0

    slo: dict[str, float] = field(default_factory=dict)  # ms, keys from SLO_METRICS

    # Output.
    out: str | None = None  # JSON report path
    plots: str | None = None  # directory for PNG plots
    progress: bool = True
    keep_records: bool = True  # per-request records in the report

    def __post_init__(self) -> None:
        if self.concurrency is not None and self.request_rate is not None:
            raise ValueError("give concurrency or request_rate, not both")
        if min(self.num_requests, self.image_repeat) < 1 or self.warmup < 0:
            raise ValueError("num_requests and image_repeat must be >= 1, warmup >= 0")
        if any(c < 1 for c in self.concurrencies) or any(r <= 0 for r in self.rates):
            raise ValueError("concurrency must be >= 1 and request rates > 0")
        if self.image_format not in ("png", "jpeg"):
            raise ValueError("image_format: png or jpeg")
        if self.video_frames < 1 or self.video_repeat < 1 or not 0 < self.video_fps <= 1000:
            raise ValueError("video_frames and video_repeat must be >= 1, video_fps in (0, 1000]")
        if unknown := set(self.slo) - set(SLO_METRICS):
            raise ValueError(f"unknown SLO metrics {sorted(unknown)}; known: {SLO_METRICS}")
        # Parse every spec now, so that a bad one fails before any request is sent.
        _ = (self.image_dist, self.size_dist, self.video_dist, self.video_size_dist, self.words_dist)
        tokens = self.tokens_dist
        if (tokens.span[0] if tokens.span else min(tokens.values)) < 1:
            raise ValueError("max_tokens must be >= 1")

    @property
    def concurrencies(self) -> tuple[int, ...]:
        return tuple(int(c) for c in _floats(self.concurrency))

    @property
    def rates(self) -> tuple[float, ...]:
        return _floats(self.request_rate)

    @property
    def mode(self) -> str:
        return "request_rate" if self.rates else "concurrency"

    @property
    def levels(self) -> tuple[float, ...]:
        """The swept values, one run each; closed loop at concurrency 1 when neither is given."""
        if self.rates:
            return self.rates
        return tuple(float(c) for c in self.concurrencies) or (1.0,)

    @property
    def image_dist(self) -> Dist:
        return parse_dist(self.images)

    @property
    def size_dist(self) -> Dist:
        return parse_dist(self.image_size, parse_size)

    @property
    def video_dist(self) -> Dist:
        return parse_dist(self.videos)

    @property
    def video_size_dist(self) -> Dist:
        return parse_dist(self.video_size, parse_size)

    @property
    def words_dist(self) -> Dist:
        return parse_dist(self.prompt_words)

    @property
    def tokens_dist(self) -> Dist:
        return parse_dist(self.max_tokens)


def level_label(mode: str, level: float) -> str:
    """``"rate=inf"``, ``"rate=2"``, ``"concurrency=4"``: a run's name in tables, plots and files."""
    if mode == "concurrency":
        return f"concurrency={int(level)}"
    return "rate=inf" if math.isinf(level) else f"rate={level:g}"
