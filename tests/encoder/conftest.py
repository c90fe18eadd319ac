"""Fixtures for the encoder tests: a tiny checkpoint, test images, a running encoder, a prefill inbox."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.clients.encoder_launch import EncoderProcess, start_encoder
from shared.checkpoint.tiny import cached_tiny_checkpoint
from shared.models.loader import load_model
from shared.models.qwen3_vl_moe import ImageFeature, Qwen3VLMoeForConditionalGeneration
from shared.multimodal.image import decode_image
from shared.multimodal.vision_inputs import ImageProcessorConfig, preprocess_image
from shared.wire import ImageEmbeddingResult, PullSocket, StageError

torch.set_num_threads(1)

# Small images keep the vision forward cheap: 64x64 (4 tokens) up to 320x320 (100 tokens).
TINY_PIXELS = {"min_pixels": 64 * 64, "max_pixels": 320 * 320}


def png(width: int, height: int, seed: int = 0, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached_tiny_checkpoint(tmp_path_factory.getbasetemp() / "checkpoints", **TINY_PIXELS)


@pytest.fixture(scope="session")
def reference(checkpoint: Path) -> Callable[[bytes], ImageFeature]:
    """get_image_feature computed in this process, one image per call, fp32."""
    model: Qwen3VLMoeForConditionalGeneration = load_model(checkpoint, parts={"vision"}, dtype="float32")
    processor = ImageProcessorConfig.from_checkpoint(checkpoint)

    def encode(data: bytes) -> ImageFeature:
        pixel_values, grid = preprocess_image(decode_image(data), processor)
        return model.get_image_feature(pixel_values, [grid])[0]

    return encode


@pytest.fixture(scope="session")
def encoder(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EncoderProcess]:
    proc = start_encoder(
        checkpoint, "--torch-threads", "1", "--dtype", "float32", log_dir=tmp_path_factory.mktemp("encoder")
    )
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def inbox() -> Iterator[PullSocket]:
    """The test's stand-in for a prefill worker's embedding inbox."""
    sock = PullSocket("tcp://127.0.0.1:0", bind=True, accept=[ImageEmbeddingResult, StageError])
    try:
        yield sock
    finally:
        sock.close()


def collect(inbox: PullSocket, count: int, timeout: float = 30.0) -> list[ImageEmbeddingResult | StageError]:
    got = []
    for _ in range(count):
        msg = inbox.recv(timeout)
        assert msg is not None, f"only {len(got)} of {count} messages arrived within {timeout}s"
        got.append(msg)
    assert inbox.recv(0.05) is None, "more messages than expected"
    return got
