"""Train the bundled demo model (``shared/assets/demo``) from scratch on synthetic pictures of shapes.

    python -m tools.train_demo [--out shared/assets/demo] [--seed 0] [--steps 3600] [--threads 2]

CPU only, deterministic for a given seed, thread count and machine; about 13 minutes on 2 idle
cores. Steps:

1. Train the tokenizer on the synthetic corpus; build a tiny Qwen3-VL-MoE (``DEMO_SPEC``: the real
   architecture, vision tower with deepstack, MoE language model) with the tiny-checkpoint init.
2. Tower phase (``--tower-steps``): the vision tower alone learns per-token colour, 3 x 3 cell and
   per-shape kind through throw-away linear heads (``tools.demo_probe``), 16 fresh pictures a step.
3. Chat phase (``--steps``): the whole model on packed chats (``tools.demo_data.training_group``:
   ``--batch`` pictures a step, ``--group`` chats per picture sharing one vision pass), loss on the
   answer tokens, plus the probe's loss and a small router load-balancing term.

AdamW, linear warmup then cosine decay, in both phases. Every picture and chat comes from a seed
below ``seed * 10_000_000 + 10_000_000`` (the evaluation seeds start at 10^9). Writes the
checkpoint in the published Hugging Face layout and ``train_summary.json`` (the arguments, losses
and time) next to it. Evaluate with ``python -m tools.eval_demo``.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from shared.checkpoint.tiny_weights import random_state
from shared.models.loader import load_model
from shared.multimodal.prompt import PromptBuilder
from shared.multimodal.vision_inputs import ImageProcessorConfig
from tools.demo_batch import Batcher, RouterBalance, batch_loss
from tools.demo_checkpoint import (
    DEMO_DIR,
    build_demo_tokenizer,
    published_state,
    resolved_spec,
    write_demo_checkpoint,
)
from tools.demo_data import EVAL_SEED_BASE, training_group
from tools.demo_probe import VisionProbe, tower_loss, warmup_pictures

SEEDS_PER_RUN = 10_000_000
BALANCE_WEIGHT = 0.01


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)


def train_tower(model, probe: VisionProbe, processor, args: argparse.Namespace, base: int) -> float:
    """Phase 1: the vision tower alone on the probe loss, ``--tower-batch`` fresh pictures a step."""
    assert model.visual is not None
    opt = _optimizer(torch.nn.ModuleList([model.visual, probe]), args.lr, args.weight_decay)
    start, smooth = time.time(), None
    for step in range(args.tower_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.tower_steps, args.lr, args.warmup)
        seeds = range(base + step * args.tower_batch, base + (step + 1) * args.tower_batch)
        loss = tower_loss(model, probe, *warmup_pictures(seeds, processor))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.visual.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        value = loss.detach().item()
        smooth = value if smooth is None else 0.95 * smooth + 0.05 * value
        if (step + 1) % args.log_every == 0 or step + 1 == args.tower_steps:
            print(
                f"tower {step + 1:5d}  probe {value:.4f} (avg {smooth:.4f})  {time.time() - start:6.0f}s",
                flush=True,
            )
    return smooth or 0.0


def train(args: argparse.Namespace) -> dict:
    start = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if (args.seed + 1) * SEEDS_PER_RUN > EVAL_SEED_BASE:
        raise ValueError("seed too large: training chats would reach the evaluation seeds")
    tok = build_demo_tokenizer()
    spec = resolved_spec(tok, seed=args.seed)
    state = random_state(spec, tok.get_vocab_size())
    state["lm_head.weight"] *= 0.125  # the test init's logit std of 4 is too confident to train from
    with tempfile.TemporaryDirectory() as tmp:
        write_demo_checkpoint(tmp, spec, tok, state)
        model = load_model(tmp, dtype="float32")
        builder = PromptBuilder.from_checkpoint(tmp)
        processor = ImageProcessorConfig.from_checkpoint(tmp)
    model.train().requires_grad_(True)
    batcher = Batcher(builder, processor, model.config.image_token_id)
    balance = RouterBalance(model)
    probe = VisionProbe(spec.hidden_size, 1 + len(spec.deepstack_visual_indexes))
    base = args.seed * SEEDS_PER_RUN
    tower_probe = train_tower(model, probe, processor, args, base + SEEDS_PER_RUN // 2)
    opt = _optimizer(torch.nn.ModuleList([model, probe]), args.lr, args.weight_decay)
    smooth, history, data_s = None, [], 0.0
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        t = time.time()
        seeds = range(base + step * args.batch, base + (step + 1) * args.batch)
        batch = batcher([chat for seed in seeds for chat in training_group(seed, args.group)])
        data_s += time.time() - t
        loss, probe_loss = batch_loss(model, batch, probe)
        aux = balance.pop()
        (loss + BALANCE_WEIGHT * aux + args.probe_weight * probe_loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        value = loss.detach().item()
        smooth = value if smooth is None else 0.95 * smooth + 0.05 * value
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            elapsed = time.time() - start
            history.append({"step": step + 1, "loss": round(smooth, 4), "seconds": round(elapsed, 1)})
            print(
                f"step {step + 1:5d}  loss {value:.4f} (avg {smooth:.4f})  balance {aux.detach().item():.3f}  "
                f"probe {probe_loss.detach().item():.3f}  "
                f"tokens {len(batch.input_ids)}  {elapsed:6.0f}s (data {data_s:.0f}s)",
                flush=True,
            )
    model.eval()
    out = write_demo_checkpoint(args.out, spec, tok, published_state(model))
    summary = {
        "seed": args.seed,
        "steps": args.steps,
        "batch_groups": args.batch,
        "chats_per_group": args.group,
        "peak_lr": args.lr,
        "warmup": args.warmup,
        "weight_decay": args.weight_decay,
        "tower_steps": args.tower_steps,
        "tower_batch": args.tower_batch,
        "tower_probe_loss_avg": round(tower_probe, 4),
        "probe_weight": args.probe_weight,
        "threads": args.threads,
        "groups_seen": args.steps * args.batch,
        "final_loss_avg": round(smooth or 0.0, 4),
        "train_seconds": round(time.time() - start, 1),
        "torch": torch.__version__,
        "loss_history": history,
    }
    (Path(out) / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out} in {summary['train_seconds']:.0f}s, final loss (avg) {summary['final_loss_avg']}")
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.train_demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=DEMO_DIR)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=3600)
    p.add_argument("--batch", type=int, default=8, help="pictures (chat groups) per step")
    p.add_argument("--group", type=int, default=3, help="chats per picture")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=60)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--tower-steps", type=int, default=600, help="phase 1: vision tower + probe only")
    p.add_argument("--tower-batch", type=int, default=16, help="pictures per phase-1 step")
    p.add_argument("--probe-weight", type=float, default=0.5, help="weight of the vision probe's loss")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=25)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    train(parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
