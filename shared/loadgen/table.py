"""The readable summary of a report: one column per run, one row per figure.

When some answer carried a ``timeline`` (epd's router sends one), the latency rows are followed by
how many did and a p50/p99 row per stage (ms, over the requests that crossed it; "-" in a run
without it). Without any timeline (vLLM, older servers) the table has no stage rows.
"""

from __future__ import annotations

from shared.loadgen.metrics import stage_order


def _num(value: float | None, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def _stage_rows(run: dict, stages: list[str]) -> list[tuple[str, str]]:
    rows = [("timelines / completed", f"{run.get('timelines', 0)} / {run['completed']}")]
    for stage in stages:
        s = run.get("stages_ms", {}).get(stage)
        cell = "-" if s is None else "/".join(_num(s[k]) for k in ("p50", "p99"))
        rows.append((f"  {stage} p50/p99 (ms)", cell))
    return rows


def report_stages(runs: list[dict]) -> list[str]:
    """Every stage some run has, in the timeline's order; [] when no answer carried a timeline."""
    return stage_order({stage for run in runs for stage in run.get("stages_ms", {})})


def _rows(run: dict, stages: list[str] | None = None) -> list[tuple[str, str]]:
    errors = ", ".join(f"{k}: {v}" for k, v in run["errors"].items())
    rows = [
        ("completed / failed", f"{run['completed']} / {run['failed']}"),
        ("errors", errors or "-"),
        ("duration (s)", _num(run["duration_s"], ".2f")),
        ("requests/s", _num(run["request_throughput"], ".2f")),
        ("input tokens/s", _num(run["input_token_throughput"])),
        ("output tokens/s", _num(run["output_token_throughput"])),
        ("total tokens/s", _num(run["total_token_throughput"])),
        ("mean in flight", _num(run["mean_in_flight"], ".2f")),
    ]
    for key, name in (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2e", "E2E")):
        s = run[f"{key}_ms"]
        rows.append((f"{name} mean/p50/p99 (ms)", "/".join(_num(s[k]) for k in ("mean", "p50", "p99"))))
    if stages is not None:
        rows += _stage_rows(run, stages)
    if g := run["goodput"]:
        rows.append(("goodput (req/s, share)", f"{g['request_goodput']:.2f}, {g['fraction']:.0%}"))
    return rows


def summary_table(report: dict) -> str:
    runs = report["runs"]
    with_timeline = any(r.get("timelines") for r in runs)
    stages = report_stages(runs) if with_timeline else None
    columns = [_rows(r, stages) for r in runs]
    names = [name for name, _ in columns[0]] if columns else []
    header = ["", *(r["label"] for r in runs)]
    body = [[name, *(col[i][1] for col in columns)] for i, name in enumerate(names)]
    widths = [max(len(row[c]) for row in [header, *body]) for c in range(len(header))]
    lines = [f"model {report['model']}, {runs[0]['num_requests'] if runs else 0} requests per run"]
    for row in [header, *body]:
        lines.append(
            "  ".join(
                cell.ljust(w) if c == 0 else cell.rjust(w)
                for c, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines)
