"""Video through the disaggregated cluster over HTTP, against transformers on the same checkpoint.

Three conversations (1 video; image, video, image; 2 videos, one of them sent as still frames):
the answer's greedy tokens (32, or up to the end of sequence) equal transformers' ``generate``, and
every step's top-20 logprobs (the first from the prompt's logits) are within 1e-4 of transformers'
logits. Then the caches: the same video twice is encoded once; a video that differs in one late
frame, and the same video sampled at another fps, are encoded anew and share no KV past the text
before them. Then the bad-video corpus: every case a 400 with an OpenAI error (refused by the
router's probe, or by the encoder when its frames do not decode), and the cluster answers the
next request.
"""

from __future__ import annotations

import openai
import pytest

from shared.multimodal.prompt import VideoSlots
from shared.multimodal.video_synth import bad_frame_lists, bad_video_corpus, corrupt_video_cases, make_video
from tests.router.video_ref import (
    CONVERSATION_IDS,
    CONVERSATIONS,
    TEXT,
    Reference,
    ask,
    assert_matches,
    frames_part,
    parts_of,
    video_part,
)

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def ref(ckpt, hf) -> Reference:
    return Reference(ckpt, hf)


@pytest.fixture(scope="module")
def client(cluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=cluster.url + "/v1", api_key="none", max_retries=0, timeout=300)


@pytest.mark.parametrize("items", CONVERSATIONS, ids=CONVERSATION_IDS)
def test_greedy_and_logprobs_match_transformers(cluster, client, ref, items):
    out = ask(client, cluster.model, parts_of(items))
    tokens, logits, n_prompt = ref.run(items)
    assert_matches(out, tokens, logits, n_prompt, ref)


def encoded(cluster) -> float:
    """Images and videos run through the vision tower, all encoders."""
    return sum(cluster.metric(f"encoder-{i}", "encoder_batch_images_sum") for i in range(2))


def cached_tokens(cluster) -> float:
    return cluster.metric("prefill-0", "prefill_prompt_tokens_cached_total")


def test_the_same_video_is_encoded_once_and_variants_share_nothing(cluster, client, ref):
    video = make_video(frames=16, width=64, height=64, fps=4.0, seed=11)
    late = make_video(frames=16, width=64, height=64, fps=4.0, seed=11, vary_frame=15)
    assert late != video
    misses = encoded(cluster)
    first = ask(client, cluster.model, [video_part(video)])
    assert encoded(cluster) == misses + 1
    again = ask(client, cluster.model, [video_part(video)])
    assert encoded(cluster) == misses + 1, "the same video was encoded twice"
    assert again.choices[0].message.content == first.choices[0].message.content

    chat = ref.builder.build(
        [{"role": "user", "content": [TEXT, {"type": "video"}]}], [], [VideoSlots((2, 4, 4), (0.5, 1.5))]
    )
    prefix = chat.video_spans[0][0][0]  # tokens before the video's first frame (its timestamp included)
    for variant, fps in ((late, None), (video, 1.0)):
        misses, before = encoded(cluster), cached_tokens(cluster)
        extra = {"mm_processor_kwargs": {"fps": fps}} if fps else {}
        out = ask(client, cluster.model, [video_part(variant)], **extra)
        assert encoded(cluster) == misses + 1, "a variant's embeddings came from the cache"
        assert cached_tokens(cluster) - before <= prefix, "a variant reused KV past the text before the video"
        tokens, logits, n_prompt = ref.run([("video", variant)], fps=fps)
        assert_matches(out, tokens, logits, n_prompt, ref)


BAD = [(name, video_part(data), msg, {}) for name, data, msg in bad_video_corpus()]
# Damage in a frame the sampling skips may go unnoticed (only decoded frames are checked): sample all 24.
BAD += [
    (n, video_part(d), m, {"mm_processor_kwargs": {"num_frames": 24}}) for n, d, m in corrupt_video_cases()
]
BAD += [(name, frames_part(frames, 2.0), msg, {}) for name, frames, msg in bad_frame_lists()]


@pytest.mark.parametrize("case", BAD, ids=lambda c: c[0])
def test_bad_videos_are_400s_and_the_cluster_serves_on(cluster, client, case):
    """Refused by the router (probe) or by the encoder (frames that do not decode): a 400 either way."""
    _, part, expected, extra = case
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, cluster.model, [part], **extra)
    body = err.value.body
    assert body["type"] == "invalid_request_error" and expected.lower() in body["message"].lower(), body
    ok = client.chat.completions.create(
        model=cluster.model, messages=[{"role": "user", "content": "hi"}], max_tokens=2, temperature=0
    )
    assert ok.choices[0].finish_reason in ("length", "stop")
