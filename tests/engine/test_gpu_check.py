"""``python -m bench.gpu_check`` on the CPU at tiny widths: every section reported, no check FAILED, nothing
but torch on its import path; and the pieces its numbers rest on (parameter counts, context fills).

The script is run once, compiled paths included (FlexPagedAttention and the compiled decode step:
~1-2 min on 2 cores, mostly compiling).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from bench.gpu_check.common import PRESETS
from bench.gpu_check.model import Sizes, model_config, random_language_model
from bench.gpu_check.timing import fill
from shared.engine import Engine, EngineConfig
from shared.models.qwen3_vl_moe import Qwen3VLMoeForConditionalGeneration
from tests.repo import REPO_ROOT

pytestmark = pytest.mark.slow

SECTIONS = (
    "## 1. Roofline probes",
    "## 2. Model",
    "## 3. Paged attention vs the contiguous reference",
    "## 4. KV handoff: CPU -> cpu",
    "## 5. Engine step times",
    "### Eager",
    "### Compiled decode",
)
FORBIDDEN = "{'fastapi','zmq','transformers','safetensors','msgpack','uvicorn'}"


def test_tiny_cpu_run_reports_every_section_and_no_failure():
    cmd = [sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--preset", "tiny", "--threads", "1"]
    run = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=540)
    report = run.stdout
    print(report)
    assert run.returncode == 0, f"exit {run.returncode}\n{report}\n{run.stderr}"
    for title in SECTIONS:
        assert title in report, f"no section {title!r}"
    assert not [line for line in report.splitlines() if "FAILED" in line]
    assert "ok: PagedAttention (gather) bfloat16" in report and "ok: greedy: handed-over tokens" in report
    assert "decode steps ran through the compiled graph" in report
    assert "| 128 | 4 |" in report  # the widest decode row of the tiny preset


def test_import_path_holds_no_service_package():
    code = (
        "import sys; import bench.gpu_check.__main__; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN}))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_sizes_of_the_published_model():
    """At the full preset's widths, 48 layers are Qwen3-VL-30B-A3B: 30.5B parameters, 3.3B active."""
    with torch.device("meta"):
        model = Qwen3VLMoeForConditionalGeneration(model_config(PRESETS["full"], 1), parts={"language"})
    sizes = Sizes.of(model)
    assert abs(sizes.total(48) / 30.53e9 - 1) < 0.005
    active = sizes.embed + sizes.head + 48 * sizes.layer_active
    assert 3.2e9 < active < 3.4e9
    assert sizes.experts_hit(1) == pytest.approx(8)
    assert 125 < sizes.experts_hit(64) < 128


@pytest.mark.parametrize("mode", ["prefill", "import"])
def test_fill_leaves_every_sequence_decoding_at_its_context(mode):
    p = PRESETS["tiny"]
    model = random_language_model(model_config(p, p.layers), torch.float32, torch.device("cpu"), seed=0)
    engine = Engine(model, EngineConfig(num_blocks=64, max_num_seqs=4, enable_prefix_cache=False))
    ctx = 37  # a partial last block
    ids = fill(engine, ctx, 3, mode, p.vocab, max_tokens=20)
    seqs = [engine.seqs[rid] for rid in ids]
    assert all(s.num_prompt_tokens == ctx and s.is_decoding for s in seqs)
    assert all(s.num_computed_tokens >= ctx for s in seqs)
    if mode == "import":  # one KV shared by every sequence, written into each one's blocks
        for layer in range(p.layers):
            (k0, v0), (k1, v1) = (engine.pool.read_layer(s.block_table, ctx, layer) for s in seqs[:2])
            assert torch.equal(k0, k1) and torch.equal(v0, v1) and k0.abs().sum() > 0
