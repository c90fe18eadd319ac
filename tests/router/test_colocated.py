"""Colocated mode (``epd up --colocated``): the same OpenAI API with the whole model in the router's
process. Greedy parity with transformers (0, 1, 2 images; videos; a JSON schema), streaming, a client that disconnects,
bad images; and, in-process, the backend's own failure paths (bad image bytes, a failing step)."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from router.colocated import ColocatedBackend, load_colocated
from router.config import parse_config
from router.jobs import Event, Job, LoadedImage, VisionTokens
from router.metrics import RouterMetrics
from shared.engine import SamplingParams
from shared.models.config import load_config
from shared.multimodal.image import image_hash
from shared.wire.messages import ErrorKind
from tests.cluster import EpdCluster, start_cluster, wait_for
from tests.demo_pictures import data_url
from tests.encoder.conftest import png
from tests.router.parity import (
    assert_greedy_matches_transformers,
    assert_guided_matches_transformers,
    assert_streaming_equals_non_streaming,
)
from tests.router.video_ref import CONVERSATION_IDS, CONVERSATIONS, Reference, ask, assert_matches, parts_of

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def server(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EpdCluster]:
    with start_cluster(
        ckpt, tmp_path_factory.mktemp("colocated"), "--colocated", "--dtype", "float32",
        "--router-arg=--num-blocks=512", "--router-arg=--max-model-len=4096", "--router-arg=--max-images=4",
        "--router-arg=--compile-decode",  # the users' default (the tests' is eager: tests/conftest.py)
    ) as c:  # fmt: skip
        yield c


@pytest.fixture(scope="module")
def client(server: EpdCluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.mark.parametrize("n_images", [0, 1, 2])
def test_greedy_matches_transformers(server, client, ckpt, hf, n_images):
    text = assert_greedy_matches_transformers(client, server.model, ckpt, hf, n_images)
    print(f"\ncolocated, {n_images} images: {text!r} == transformers")


def test_json_schema_answers_match_transformers_under_the_same_automaton(server, client, ckpt, hf):
    text = assert_guided_matches_transformers(client, server.model, ckpt, hf)
    print(f"\ncolocated json_schema answer: {text!r} == transformers")


@pytest.mark.parametrize("items", CONVERSATIONS, ids=CONVERSATION_IDS)
def test_video_matches_transformers(server, client, ckpt, hf, items):
    ref = Reference(ckpt, hf)
    out = ask(client, server.model, parts_of(items))
    assert_matches(out, *ref.run(items), ref)


def test_health_and_streaming_equals_non_streaming(server, client):
    health = httpx.get(server.url + "/health").json()
    assert health == {"ready": True, "stages": {"engine": True}}
    assert_streaming_equals_non_streaming(client, server.model)
    metrics = httpx.get(server.url + "/metrics").text
    for name in (
        "router_ttft_seconds_bucket",
        "router_inter_token_seconds_bucket",
        "router_e2e_seconds_bucket",
    ):
        assert name in metrics, name


def test_disconnect_mid_stream_frees_everything(server):
    parts = [
        {"type": "text", "text": "a long story"},
        {"type": "image_url", "image_url": {"url": data_url(png(64, 64))}},
    ]
    body = {
        "model": server.model, "messages": [{"role": "user", "content": parts}], "max_tokens": 3000,
        "stream": True, "ignore_eos": True,
    }  # fmt: skip
    aborts = server.metric("router", "router_aborts_total", 'reason="client gone"')
    with (
        httpx.Client(base_url=server.url, timeout=30) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as r,
    ):
        assert r.status_code == 200
        lines, it = [], r.iter_lines()  # keep the iterator: dropping it closes the connection
        for line in it:
            lines += [line] if line.startswith("data: ") else []
            if len(lines) >= 4:
                break
        busy = server.get_json(server.url + "/debug/requests")
        assert busy["requests"] and busy["engine"]["running"] == 1, busy

    def freed() -> bool:
        snap = server.get_json(server.url + "/debug/requests")
        e = snap["engine"]
        return (
            not snap["requests"]
            and e["running"] == e["waiting"] == 0
            and e["free_blocks"] == e["total_blocks"]
        )

    assert wait_for(freed), server.logs()
    print(
        f"\nwhile streaming: {busy['engine']}; after the disconnect: {server.get_json(server.url + '/debug/requests')['engine']}"
    )
    assert server.metric("router", "router_aborts_total", 'reason="client gone"') == aborts + 1
    ok = httpx.post(
        server.url + "/v1/chat/completions", json={**body, "stream": False, "max_tokens": 2}, timeout=30
    )
    assert ok.status_code == 200, ok.text


def test_bad_image_is_a_400_and_the_server_goes_on(server):
    bad = [
        {"type": "text", "text": "x"},
        {"type": "image_url", "image_url": {"url": data_url(b"not an image")}},
    ]
    body = {"model": server.model, "messages": [{"role": "user", "content": bad}], "max_tokens": 2}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text
    print(f"\nbad image -> {r.status_code} {r.json()['error']['message']!r}")
    ok = httpx.post(
        server.url + "/v1/chat/completions",
        json={**body, "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert ok.status_code == 200, ok.text


# ----- in-process: the backend's own failure paths ----------------------------------------------------
@pytest.fixture(scope="module")
def backend(ckpt: Path) -> Iterator[ColocatedBackend]:
    cfg = parse_config(["--model", str(ckpt), "--colocated", "--dtype", "float32", "--num-blocks", "64"])
    model_cfg = load_config(ckpt)
    tokens = VisionTokens(
        model_cfg.image_token_id, model_cfg.video_token_id, model_cfg.vision.spatial_merge_size
    )
    b = load_colocated(cfg, RouterMetrics(), tokens)
    b.start()
    yield b
    b.stop()


def run_job(
    b: ColocatedBackend,
    rid: str,
    prompt: list[int],
    images: list[LoadedImage] = (),
    timeout_s: float = 30,
    **params,
) -> list[Event]:
    events: queue.Queue[Event] = queue.Queue()
    sampling = SamplingParams(**{"temperature": 0, "max_tokens": 3, **params})
    b.submit(Job(rid, prompt, list(images), sampling, time.monotonic() + timeout_s, events.put))
    out = [events.get(timeout=30)]
    while not (out[-1].finish or out[-1].error):
        out.append(events.get(timeout=30))
    return out


def test_backend_fails_bad_bytes_and_a_failing_step_without_dying(backend, ckpt):
    cfg = load_config(ckpt)
    prompt = [1, 2, cfg.vision_start_token_id, *[cfg.image_token_id] * 4, cfg.vision_end_token_id]
    bad = LoadedImage(b"\x89PNG garbage", image_hash(b"\x89PNG garbage"), (1, 4, 4), spans=((3, 7),))
    (ev,) = run_job(backend, "bad", prompt, [bad])
    assert ev.error is ErrorKind.BAD_IMAGE and "image 0" in ev.message

    step, calls = backend.engine.step, []

    def broken() -> list:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return step()

    backend.engine.step = broken  # type: ignore[method-assign]
    try:
        (ev,) = run_job(backend, "crash", [1, 2, 3])
        assert ev.error is ErrorKind.INTERNAL and "boom" in ev.message
        good = run_job(backend, "after", [1, 2, 3])
    finally:
        backend.engine.step = step  # type: ignore[method-assign]
    assert [len(e.tokens) for e in good] == [1, 1, 1] and good[-1].finish == "length"
    snap = backend.snapshot().result(5)
    assert not snap["requests"] and snap["engine"]["free_blocks"] == snap["engine"]["total_blocks"]
    assert backend.ready(time.monotonic()) == {"engine": True}


def test_backend_refuses_what_cannot_fit_times_out_and_reports_top_logprobs(backend):
    (ev,) = run_job(backend, "huge", [1, 2, 3], max_tokens=64 * 16)  # more than the 64-block pool
    assert ev.error is ErrorKind.BAD_REQUEST and "blocks" in ev.message
    (ev,) = run_job(backend, "late", [1, 2, 3], timeout_s=-1)
    assert ev.error is ErrorKind.DEADLINE_EXCEEDED
    events = run_job(backend, "top", [1, 2, 3], logprobs=2)
    for e in events:
        ((tok, lp),) = e.tokens
        assert len(e.top) == 1 and len(e.top[0]) == 2 and lp is not None and lp <= 0
        assert tok == e.top[0][0][0]  # greedy: the chosen token is the best one
    snap = backend.snapshot().result(5)
    assert not snap["requests"] and snap["engine"]["free_blocks"] == snap["engine"]["total_blocks"]
