"""The readable summary of a report: one column per run, one row per figure."""

from __future__ import annotations


def _num(value: float | None, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def _rows(run: dict) -> list[tuple[str, str]]:
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
    if g := run["goodput"]:
        rows.append(("goodput (req/s, share)", f"{g['request_goodput']:.2f}, {g['fraction']:.0%}"))
    return rows


def summary_table(report: dict) -> str:
    runs = report["runs"]
    columns = [_rows(r) for r in runs]
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
