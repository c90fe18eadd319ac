"""A disaggregated cluster on loopback for the tests: one encoder, one prefill, decode workers,
moving KV over ZMQ or Mooncake (TCP), as the test module's ``cluster`` parameter says.

The test plays the router (``DisaggClient``). Processes start once per module and are always
stopped in teardown. Prompts are built here with real PNG images; the reference is transformers'
``generate`` on the same checkpoint with the same preprocessing, fp32.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from bench.clients.encoder_launch import EncoderProcess, start_encoder
from bench.clients.prefill import DecodeTarget, DisaggClient
from bench.launch import ServiceProcess, start_service
from shared.models.config import ModelConfig, load_config
from shared.multimodal.image import decode_image
from shared.multimodal.vision_inputs import ImageProcessorConfig, preprocess_image
from tests.encoder.conftest import png
from tests.engine.conftest import SPEC
from tests.engine.prompts import hf_greedy

TRANSFERS = ["zmq", "mooncake"]
COMMON = ("--torch-threads", "1", "--dtype", "float32", "--http-port", "0")


@dataclass
class Prompt:
    ids: list[int]
    images: list[tuple[bytes, tuple[int, int, int]]] = field(default_factory=list)  # (png, grid thw)
    pixels: list[torch.Tensor] = field(default_factory=list)


def start_decode(ckpt: Path, report_to: str, log_dir: Path, *args: str) -> ServiceProcess:
    return start_service(
        "services.decode", ckpt, *COMMON, "--port", "0", "--kv-port", "0", "--report-to", report_to,
        "--report-interval-s", "0.2", *args, log_dir=log_dir,
    )  # fmt: skip


def target(proc: ServiceProcess) -> DecodeTarget:
    return DecodeTarget(proc.info["kv"], proc.info["control"])


class Cluster:
    def __init__(
        self, ckpt: Path, log_dir: Path, prefill_args: tuple[str, ...] = (), transfer: str = "zmq"
    ) -> None:
        self.ckpt, self.log_dir, self.transfer = ckpt, log_dir, transfer
        self.config: ModelConfig = load_config(ckpt)
        self.procs: list[ServiceProcess | EncoderProcess] = []
        try:
            self.encoder = start_encoder(ckpt, "--torch-threads", "1", "--dtype", "float32", log_dir=log_dir)
            self.procs.append(self.encoder)
            self.prefill = start_service(
                "services.prefill", ckpt, *COMMON, "--port", "0", "--inbox-port", "0", "--num-blocks", "1024",
                "--kv-reply-timeout-s", "3", "--kv-transfer", transfer, *prefill_args, log_dir=log_dir,
            )  # fmt: skip
            self.procs.append(self.prefill)
            self.client = self.new_client()
        except BaseException:
            self.stop()
            raise

    def new_client(self, heartbeat_timeout_s: float = 3.0) -> DisaggClient:
        cfg = self.config
        return DisaggClient(
            self.prefill.info["zmq"], self.prefill.info["inbox"], self.encoder.zmq, cfg.image_token_id,
            cfg.vision.spatial_merge_size, heartbeat_timeout_s,
        )  # fmt: skip

    def decode(self, *args: str, report_to: str | None = None) -> ServiceProcess:
        transfer = ("--kv-transfer", self.transfer)
        proc = start_decode(self.ckpt, report_to or self.client.reply_to, self.log_dir, *transfer, *args)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for p in self.procs:
            p.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path}\n{p.log()[-3000:]}" for p in self.procs)


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint) -> Path:
    return tiny_checkpoint(**SPEC)


@pytest.fixture(scope="module", params=TRANSFERS)
def cluster(ckpt, tmp_path_factory, request) -> Iterator[Cluster]:
    """Every test of a module that uses it runs over each KV transfer (``--kv-transfer``)."""
    c = Cluster(ckpt, tmp_path_factory.mktemp("cluster"), transfer=request.param)
    try:
        yield c
    finally:
        c.client.close()
        c.stop()


@pytest.fixture(scope="module")
def hf(ckpt):
    from transformers import Qwen3VLMoeForConditionalGeneration

    return Qwen3VLMoeForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()


def make_prompt(cfg: ModelConfig, processor: ImageProcessorConfig, seed: int, pieces: list) -> Prompt:
    """``pieces``: ints are that many random text tokens, tuples (w, h) are PNG images."""
    gen = torch.Generator().manual_seed(seed)
    p = Prompt([])
    for i, piece in enumerate(pieces):
        if isinstance(piece, int):
            p.ids += torch.randint(0, 1000, (piece,), generator=gen).tolist()
            continue
        data = png(*piece, seed=seed * 10 + i)
        pixels, grid = preprocess_image(decode_image(data), processor)
        n = grid[0] * grid[1] * grid[2] // cfg.vision.spatial_merge_size**2
        p.ids += [cfg.vision_start_token_id] + [cfg.image_token_id] * n + [cfg.vision_end_token_id]
        p.images.append((data, tuple(grid)))
        p.pixels.append(pixels)
    return p


def hf_generate(hf, prompt: Prompt, cfg: ModelConfig, max_new_tokens: int, **generate: Any) -> list[int]:
    return hf_greedy(
        hf, prompt.ids, prompt.pixels, [g for _, g in prompt.images], cfg, max_new_tokens, **generate
    )


def stop_ids(hf, cfg: ModelConfig) -> tuple[int, ...]:
    gen = hf.generation_config.eos_token_id
    gen = list(gen) if isinstance(gen, (list, tuple)) else [gen]
    return tuple(sorted({*cfg.eos_token_ids, *gen}))
