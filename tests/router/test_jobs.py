"""The wire message of a job's attempt, first and migrated: a migration's prompt ends with the tokens
already streamed, laid out as text after the prompt's MRoPE layout, with the rest of ``max_tokens``
and the sampler's draws counted from there."""

from __future__ import annotations

import time

import pytest
import torch

from router.jobs import Job, LoadedImage, VisionTokens, prefill_request
from shared.engine import SamplingParams
from shared.multimodal.mrope import mrope_positions
from shared.transfer import sampling_from_wire
from shared.wire import decode, encode

pytestmark = pytest.mark.unit

TOKENS = VisionTokens(image_token_id=9, video_token_id=10, merge_size=2)
PARAMS = SamplingParams(temperature=0.7, seed=5, max_tokens=12)


def job(streamed: list[int]) -> Job:
    """Text, an image of 4 tokens (patches 1 x 4 x 4, merged 1 x 2 x 2) at 3..6, text."""
    prompt = [1, 2, 3, 9, 9, 9, 9, 4, 5]
    image = LoadedImage(b"png", "a" * 64, (1, 4, 4), spans=((3, 7),))
    j = Job("rid", prompt, [image], PARAMS, time.monotonic() + 60, lambda e: None)
    j.streamed = list(streamed)
    return j


def test_a_first_attempt_sends_the_prompt_as_it_is():
    msg = prefill_request(job([]), "rid", TOKENS, "tcp://127.0.0.1:1", "tcp://127.0.0.1:2")
    assert msg.prompt_token_ids == job([]).prompt_ids
    assert sampling_from_wire(msg.sampling) == PARAMS


def test_a_migration_continues_after_the_streamed_tokens():
    j = job([40, 41, 42])
    msg = decode(encode(prefill_request(j, "rid.r1", TOKENS, "tcp://127.0.0.1:1", "tcp://127.0.0.1:2")))
    assert msg.prompt_token_ids == [*j.prompt_ids, 40, 41, 42]
    sampling = sampling_from_wire(msg.sampling)
    assert (sampling.max_tokens, sampling.draw_offset, sampling.seed) == (9, 3, 5)
    # the streamed tokens sit where decoding put them: cache index i at position i + delta
    grid = j.images[0].grid
    prompt_pos, delta = mrope_positions(j.prompt_ids, [grid], TOKENS.image_token_id, TOKENS.merge_size)
    assert msg.mrope_delta == delta
    seg = msg.layout[-1]
    assert (seg.start, seg.length, seg.position, seg.grid) == (9, 3, 9 + delta, None)
    assert torch.equal(prompt_pos[:, -1] + 1, torch.full((3,), seg.position))


def test_a_job_is_resumable_while_tokens_remain_and_none_is_a_placeholder():
    assert job([40] * 11).resumable(TOKENS)
    assert not job([40] * 12).resumable(TOKENS)
    assert not job([40, TOKENS.image_token_id]).resumable(TOKENS)
    assert not job([TOKENS.video_token_id]).resumable(TOKENS)
