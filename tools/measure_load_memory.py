"""Peak memory of loading one part of a checkpoint, measured in a fresh process.

    python -m tools.measure_load_memory CHECKPOINT --parts vision
    python -m tools.measure_load_memory CHECKPOINT --make-ratio 20   # build a test checkpoint first

Prints one JSON line: the peak resident-set growth during the load, the bytes of the parameters
the load produced, and the bytes of each part in the checkpoint. The load runs in a child process
so that the peak belongs to that load alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from safetensors import safe_open


def part_bytes(checkpoint: Path) -> dict[str, int]:
    sizes = {"vision": 0, "language": 0}
    for path in checkpoint.glob("*.safetensors"):
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                sl = f.get_slice(key)
                numel = 1
                for d in sl.get_shape():
                    numel *= d
                nbytes = numel * {"F32": 4, "BF16": 2, "F16": 2}[sl.get_dtype()]
                sizes["vision" if key.startswith("model.visual.") else "language"] += nbytes
    return sizes


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _child(checkpoint: str, parts: str) -> None:
    import torch

    from shared.models.loader import load_model

    torch.set_num_threads(1)
    # The first nn.Embedding built on the meta device imports ~800 modules of torch (~80 MB, once per
    # process, whatever the model). Pay it before measuring so the figure is the load's own.
    with torch.device("meta"):
        torch.nn.Embedding(2, 2)
    # Reset the kernel's high-water mark so that the import peak does not hide the load's.
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kb("VmRSS")
    model = load_model(checkpoint, parts=parts.split(","))
    for param in model.parameters():  # touch every page: mmap-backed tensors count once resident
        param.sum()
    after = _status_kb("VmHWM")
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"peak_rss_growth": after - before, "param_bytes": params}))


def measure(checkpoint: Path, parts: str) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-m", "tools.measure_load_memory", str(checkpoint), "--parts", parts, "--child"],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        timeout=300,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, nargs="?")
    p.add_argument("--parts", default="vision")
    p.add_argument(
        "--make-ratio", type=float, help="first build a checkpoint whose language part is R x vision"
    )
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return _child(str(args.checkpoint), args.parts)
    checkpoint = args.checkpoint
    if args.make_ratio:
        from shared.checkpoint.tiny import make_tiny_checkpoint

        checkpoint = Path(tempfile.mkdtemp(prefix="mem-ckpt-"))
        make_tiny_checkpoint(checkpoint, **ratio_spec(args.make_ratio))
    if checkpoint is None:
        p.error("give a checkpoint or --make-ratio")
    report = {"checkpoint_bytes": part_bytes(checkpoint)}
    for parts in args.parts.split(";"):
        report[parts] = measure(checkpoint, parts)
    print(json.dumps(report))


def ratio_spec(ratio: float) -> dict:
    """A checkpoint with a vision tower of a few MB and a language model ``ratio`` times larger."""
    return dict(
        vision_hidden_size=64,
        vision_intermediate_size=256,
        hidden_size=128,
        head_dim=32,
        mrope_section=(6, 5, 5),
        moe_intermediate_size=96,
        intermediate_size=256,
        text_to_vision_ratio=ratio,
    )


if __name__ == "__main__":
    main()
