"""``bench.peer_report``: the medians and ratios of a ``bench/peer_vllm.sh`` sitting, read from the
files ``vllm bench serve``, ``/usr/bin/time`` and ``bench.tree_cpu`` write."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.peer_report import collect, table

pytestmark = pytest.mark.unit


def bench_output(rps: float, ttft: float, tpot: float, cpu: float) -> str:
    """The lines of a real run's file that the report reads, among others it must skip."""
    return (
        "============ Serving Benchmark Result ============\n"
        "Successful requests:                     256       \n"
        f"Request throughput (req/s):              {rps:<10}\n"
        f"Median TTFT (ms):                        {ttft:<10}\n"
        "P50 TTFT (ms):                           1.0       \n"
        f"P99 TTFT (ms):                           {ttft * 2:<10}\n"
        f"Median TPOT (ms):                        {tpot:<10}\n"
        "Median E2EL (ms):                        283.08    \n"
        "See https://nanobind.readthedocs.io/en/latest/refleaks.htmlclient cpu user 9.11 s sys 1.42 s wall 18.68 s\n"
        "  server cpu    35.08 ms/request  29299 VLLM::Worker\n"
        f"  server cpu    {cpu:.2f} ms/request  total\n"
    )


def test_the_report_takes_medians_over_rounds_and_ratios_to_vllm(tmp_path: Path) -> None:
    for r, (v, c) in enumerate([(40.0, 30.0), (20.0, 30.0), (30.0, 45.0)], start=1):
        (tmp_path / f"vllm-1img-r{r}.txt").write_text(bench_output(v, 80.0, 4.0, 70.0))
        (tmp_path / f"cluster-1img-r{r}.txt").write_text(bench_output(c, 40.0 + r, 5.0, 55.0))
    (tmp_path / "cluster-1img-r1.txt.cpu.json").write_text("{}")  # snapshots lie beside: ignored
    runs = collect(tmp_path)
    assert sorted(runs) == [("cluster", "1img"), ("vllm", "1img")] and len(runs[("vllm", "1img")]) == 3
    text = "\n".join(table(runs))
    assert "| vllm | 40.00, 20.00, 30.00 | 30.00 | 80.00 | 160.00 | 4.00 | 70.00 |" in text
    assert "| cluster | 30.00, 30.00, 45.00 | 30.00 | 42.00 | 84.00 | 5.00 | 55.00 |" in text
    assert "cluster / vllm (medians): req/s 1.00x, TTFT p50 0.53x, TTFT p99 0.53x, TPOT p50 1.25x" in text
