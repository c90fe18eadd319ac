"""Per-run figures from the request records: throughput, latency distributions, goodput.

Definitions (latencies in ms in the output, records in seconds):
  - request / token throughput: completed requests, prompt and completion tokens of the completed
    requests, divided by the run's wall time (first send to last answer);
  - TTFT, E2E: one value per completed request; TPOT: per request (E2E - TTFT) / (tokens - 1), only
    for requests with at least two output tokens; ITL: every inter-chunk gap of every completed request;
  - percentiles interpolate linearly between order statistics (numpy's default);
  - goodput: completed requests meeting every SLO given, per second, and as a fraction of all
    requests sent (failed ones count as missing). A one-token answer meets any TPOT SLO;
  - stages (``stages_ms``): from the ``timeline.stages`` a server may send with its answer (epd's
    router does), per stage the statistics above plus ``count``, over the completed requests whose
    timeline has that stage (a request that did not cross a stage is not a zero); stages in
    ``shared.timeline.stages.StageName`` order, names it does not know after them, sorted.
    ``timelines`` counts the completed requests whose answer carried a timeline (0: none did, and
    ``stages_ms`` is empty: vLLM, older servers).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from functools import cache

import numpy as np

from shared.loadgen.client import RequestRecord

PERCENTILES = (50, 90, 99)


def latency_stats(values_s: Sequence[float]) -> dict[str, float | None]:
    """mean, median, p50, p90, p99, std, min, max in ms (None for each when there are no values)."""
    keys = ("mean", "median", *(f"p{p}" for p in PERCENTILES), "std", "min", "max")
    if len(values_s) == 0:
        return dict.fromkeys(keys)
    ms = np.asarray(values_s, dtype=float) * 1000
    pct = np.percentile(ms, PERCENTILES)
    out = {
        "mean": ms.mean(),
        "median": np.median(ms),
        **{f"p{p}": v for p, v in zip(PERCENTILES, pct, strict=True)},
    }
    out |= {"std": ms.std(), "min": ms.min(), "max": ms.max()}
    return {k: float(out[k]) for k in keys}


@cache
def _known_stages() -> tuple[str, ...]:
    from shared.timeline.stages import StageName  # on first use: shared.timeline loads the wire models

    return tuple(s.value for s in StageName)


def stage_order(names: Iterable[str]) -> list[str]:
    """``names`` in the timeline's stage order; names it does not know (a newer server) last, sorted."""
    given, known = set(names), _known_stages()
    return [s for s in known if s in given] + sorted(given - set(known))


def stage_stats(records: Sequence[RequestRecord]) -> dict[str, dict[str, float | None]]:
    """stage -> ``count`` and ``latency_stats`` (ms) over the records whose timeline has that stage."""
    samples: dict[str, list[float]] = {}
    for r in records:
        for stage, seconds in (r.stages_s or {}).items():
            samples.setdefault(stage, []).append(seconds)
    return {s: {"count": len(samples[s]), **latency_stats(samples[s])} for s in stage_order(samples)}


def meets_slo(rec: RequestRecord, slo_ms: dict[str, float]) -> bool:
    if not rec.success:
        return False
    values_s = {"ttft": rec.ttft_s, "tpot": rec.tpot_s or 0.0, "e2e": rec.e2e_s}
    return all((v := values_s[k]) is not None and v * 1000 <= limit for k, limit in slo_ms.items())


def goodput(records: Sequence[RequestRecord], duration_s: float, slo_ms: dict[str, float]) -> dict | None:
    if not slo_ms:
        return None
    good = sum(meets_slo(r, slo_ms) for r in records)
    return {
        "slo_ms": dict(slo_ms),
        "good_requests": good,
        "request_goodput": good / duration_s if duration_s > 0 else 0.0,
        "fraction": good / len(records) if records else 0.0,
    }


def summarize(records: Sequence[RequestRecord], duration_s: float, slo_ms: dict[str, float]) -> dict:
    """The figures of one run (without its mode and level, which the runner adds)."""
    ok = [r for r in records if r.success]
    n_in = sum(r.prompt_tokens or 0 for r in ok)
    n_out = sum(r.completion_tokens for r in ok)
    per_s = 1 / duration_s if duration_s > 0 else 0.0
    return {
        "num_requests": len(records),
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "errors": dict(Counter(r.error_kind for r in records if not r.success)),
        "duration_s": duration_s,
        "total_input_tokens": n_in,
        "total_output_tokens": n_out,
        "request_throughput": len(ok) * per_s,
        "input_token_throughput": n_in * per_s,
        "output_token_throughput": n_out * per_s,
        "total_token_throughput": (n_in + n_out) * per_s,
        "mean_in_flight": sum(r.e2e_s or 0.0 for r in records) * per_s,
        "ttft_ms": latency_stats([r.ttft_s for r in ok if r.ttft_s is not None]),
        "tpot_ms": latency_stats([t for r in ok if (t := r.tpot_s) is not None]),
        "itl_ms": latency_stats([g for r in ok for g in r.itl_s]),
        "e2e_ms": latency_stats([r.e2e_s for r in ok if r.e2e_s is not None]),
        "timelines": sum(r.stages_s is not None for r in ok),
        "stages_ms": stage_stats(ok),
        "goodput": goodput(records, duration_s, slo_ms),
    }
