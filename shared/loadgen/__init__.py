"""Load generator for any OpenAI-compatible chat endpoint (epd, vLLM, SGLang) with synthetic images
and videos.

It streams chat completions (``stream_options.include_usage``) over async httpx, times every request
chunk by chunk, and reports throughput, TTFT, TPOT, ITL, E2E latency and goodput per run.

    python -m shared.loadgen --base-url http://127.0.0.1:8000/v1 --concurrency 1,4,16 \\
        --num-requests 200 --warmup 8 --images 1 --image-size 448x448 --max-tokens 64 --ignore-eos \\
        --slo ttft:500 tpot:50 --out report.json --plots plots/

    python -m shared.loadgen --request-rate 1,2,4,inf --max-concurrency 64 --images 0:0.2,1:0.6,3:0.2 \\
        --image-size 224x224:3,896x896:1 --prompt-words 10-40 --max-tokens 16-128

    python -m shared.loadgen --concurrency 4 --images 0 --videos 1 --video-frames 16 \\
        --video-size 224x224 --video-fps 4 --max-tokens 32

Load: ``--concurrency`` runs a closed loop (N requests always in flight); ``--request-rate`` sends
Poisson arrivals (``inf``: all at once), optionally capped by ``--max-concurrency``. Several
comma-separated values make a sweep, one run of ``--num-requests`` each; ``--warmup`` requests go
first and are not measured. Workload: every image is generated (shapes and noise on a random
background) and distinct, so no cache helps, unless ``--image-repeat K`` uses each K times;
``--videos N`` adds N synthetic MP4s per request after the images (``--video-frames``,
``--video-size``, ``--video-fps``), distinct likewise unless ``--video-repeat K``.
Distributions: ``V``, ``A-B`` (uniform integers), ``V1,V2`` or weighted ``V1:w1,V2:w2``.

Output: a summary table on stdout (with a p50/p99 row per stage when the server sends a
per-request ``timeline``, as epd's router does); ``--out`` the JSON report (``config``,
``environment``, ``model``, ``warmup``, ``runs``: per run its figures, ``timelines`` and
``stages_ms`` included, and, unless ``--no-records``, every request's record, ``stages_s`` included); ``--plots DIR`` latency CDFs and, for a sweep, throughput and p50/p99 latency
against the swept value. Metric definitions: ``shared/loadgen/metrics.py`` and ``client.py``.
The exit status is 1 when some run completed no request, 2 when the model list is unreachable.

From Python: ``run(LoadConfig(base_url=..., concurrency=4, num_requests=50))`` returns the report.
``bench/locustfile.py`` drives the same workload from Locust.
"""

from shared.loadgen.config import LoadConfig
from shared.loadgen.runner import run

__all__ = ["LoadConfig", "run"]
