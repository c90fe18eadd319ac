"""Evaluate the demo model on freshly generated pictures, and check transformers agrees with it.

    python -m tools.eval_demo [--model shared/assets/demo] [--images 250] [--hf-sample 30] [--json out.json]

Every picture comes from a seed at or above ``EVAL_SEED_BASE`` (training never goes there). Each
picture is asked one question of every single-picture kind (describe, colour, shape, position,
count, absent); then come two-picture chats and text-only chats. An answer is right when it equals
the expected phrasing up to case, spacing and final punctuation. A sample of the prompts, spread
over all kinds, is also run through transformers' ``Qwen3VLMoeForConditionalGeneration``
(``from_pretrained`` of the same directory, ``generate`` greedy) and must give the same tokens.
Exits 1 when colour, shape or position accuracy is under 95% or transformers disagrees.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import defaultdict
from pathlib import Path

import torch

from tools.demo_checkpoint import DEMO_DIR
from tools.demo_data import EVAL_SEED_BASE, IMAGE_KINDS, Chat, make_chat
from tools.demo_infer import DemoChat, hf_greedy, load_hf

GATED_KINDS = ("colour", "shape", "position")
THRESHOLD = 0.95


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower()).rstrip(".!?")


def eval_chats(num_images: int, seed_base: int) -> list[tuple[int, Chat]]:
    """(picture group, chat): every single-picture kind per seed, then two-picture and text chats."""
    chats = [(i, make_chat(seed_base + i, kind)) for i in range(num_images) for kind in IMAGE_KINDS]
    two = [(-1, make_chat(seed_base + 2 * num_images + i, "two_image")) for i in range(num_images // 2)]
    text = [(-1, make_chat(seed_base + 3 * num_images + i, "text")) for i in range(num_images // 5)]
    return chats + two + text


def evaluate(model_dir: Path, num_images: int, seed_base: int, hf_sample: int) -> dict:
    demo = DemoChat(model_dir)
    hf = load_hf(model_dir) if hf_sample else None
    image_token = demo.model.config.image_token_id
    chats = eval_chats(num_images, seed_base)
    hf_every = max(len(chats) // hf_sample, 1) if hf_sample else 0
    scores: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    failures, examples, hf_same, hf_total = [], {}, 0, 0
    cached: tuple[int, list] = (-2, [])
    for n, (group, chat) in enumerate(chats):
        turn = chat.turns[-1]
        prepared = demo.prepare(chat.messages(with_answer=False), chat.images)
        if group < 0 or group != cached[0]:  # the kinds of one seed share their picture
            cached = (group, demo.features(prepared))
        tokens = demo.generate(prepared, cached[1])
        got = demo.decode(tokens)
        ok = normalise(got) == normalise(turn.answer)
        scores[turn.kind][0] += ok
        scores[turn.kind][1] += 1
        if len(examples.setdefault(turn.kind, [])) < 3:
            examples[turn.kind].append((turn.question, got))
        if not ok:
            failures.append(
                {"kind": turn.kind, "question": turn.question, "expected": turn.answer, "got": got}
            )
        if hf is not None and n % hf_every == 0 and hf_total < hf_sample:
            hf_total += 1
            hf_same += hf_greedy(hf, prepared, image_token) == tokens
    accuracy = {k: round(c / t, 4) for k, (c, t) in scores.items()}
    return {
        "images": num_images,
        "seed_base": seed_base,
        "accuracy": accuracy,
        "counts": {k: t for k, (_, t) in scores.items()},
        "transformers_same_tokens": f"{hf_same}/{hf_total}",
        "examples": examples,
        "failures": failures[:20],
        "passed": all(accuracy.get(k, 0) >= THRESHOLD for k in GATED_KINDS) and hf_same == hf_total,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.eval_demo", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=DEMO_DIR)
    p.add_argument("--images", type=int, default=250)
    p.add_argument("--seed-base", type=int, default=EVAL_SEED_BASE)
    p.add_argument("--hf-sample", type=int, default=30, help="prompts also run through transformers")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.seed_base < EVAL_SEED_BASE:
        p.error(f"--seed-base must be >= {EVAL_SEED_BASE}: lower seeds are training data")
    torch.set_num_threads(args.threads)
    start = time.time()
    result = evaluate(args.model, args.images, args.seed_base, args.hf_sample)
    result["seconds"] = round(time.time() - start, 1)
    print(
        f"{args.model}: {args.images} fresh pictures (seeds from {args.seed_base}), {result['seconds']:.0f}s"
    )
    for kind, acc in result["accuracy"].items():
        print(f"  {kind:10s} {acc:7.1%}  of {result['counts'][kind]}")
    print(f"  transformers gives the same greedy tokens: {result['transformers_same_tokens']}")
    for kind, pairs in result["examples"].items():
        for question, answer in pairs[:2]:
            print(f"  [{kind}] {question!r} -> {answer!r}")
    for failure in result["failures"][:8]:
        print(f"  wrong: {failure}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print("PASS" if result["passed"] else "FAIL")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
