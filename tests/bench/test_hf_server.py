"""``bench.hf_server`` (the transformers baseline) as a real process, driven by the ``openai`` client.

The reference is ``hf_generate`` (transformers' ``generate`` in this process, fp32) on the same
prompt built with the project's prompt path; the server must give the same tokens, stream them,
honour ``ignore_eos``, serve concurrent requests one after the other with a bounded queue, and
answer bad input with OpenAI errors.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import torch

from bench.launch import ServiceProcess, start_service
from shared.models.config import load_config
from shared.multimodal.image import decode_image
from shared.multimodal.prompt import PromptBuilder
from shared.multimodal.vision_inputs import ImageProcessorConfig, preprocess_image
from tests.disagg.conftest import Prompt, hf_generate
from tests.encoder.conftest import png
from tests.engine.conftest import SPEC

pytestmark = pytest.mark.cluster

PICTURE = png(96, 64, seed=1)
MAX_TOKENS = 12


def image_messages(data: bytes, text: str = "What is in the picture?") -> list[dict]:
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]
    return [{"role": "user", "content": parts}]


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint) -> Path:
    return tiny_checkpoint(**SPEC)


@pytest.fixture(scope="module")
def server(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    proc = start_service(
        "bench.hf_server", ckpt, "--port", "0", "--host", "127.0.0.1", "--dtype", "float32",
        "--torch-threads", "1", "--max-queue", "1", log_dir=tmp_path_factory.mktemp("hf-server"),
    )  # fmt: skip
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def client(server: ServiceProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.http + "/v1", api_key="none", max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def model(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


@pytest.fixture(scope="module")
def reference(ckpt: Path) -> tuple[str, int]:
    """transformers' greedy text and token count for ``image_messages(PICTURE)``, in this process."""
    from transformers import Qwen3VLMoeForConditionalGeneration

    builder = PromptBuilder.from_checkpoint(ckpt)
    pixels, grid = preprocess_image(decode_image(PICTURE), ImageProcessorConfig.from_checkpoint(ckpt))
    ids = builder.build(image_messages(PICTURE), [grid]).input_ids
    hf = Qwen3VLMoeForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
    out = hf_generate(hf, Prompt(ids, [(PICTURE, grid)], [pixels]), load_config(ckpt), MAX_TOKENS)
    return builder.tokenizer.decode(out, skip_special_tokens=True), len(out)


def test_announces_and_serves(server: ServiceProcess, ckpt: Path, model: str) -> None:
    assert f"OpenAI API at {server.http}/v1" in server.log()
    assert model == ckpt.name
    assert json.loads(server.get("/health")[1])["status"] == "ok"


def test_greedy_matches_transformers_and_streams(
    client: openai.OpenAI, model: str, reference: tuple[str, int]
) -> None:
    r = client.chat.completions.create(
        model=model, messages=image_messages(PICTURE), max_tokens=MAX_TOKENS, temperature=0
    )
    print("transformers:", repr(reference), "server:", repr(r.choices[0].message.content), r.usage)
    assert (r.choices[0].message.content, r.usage.completion_tokens) == reference
    assert r.usage.prompt_tokens > 16
    stream = client.chat.completions.create(
        model=model, messages=image_messages(PICTURE), max_tokens=MAX_TOKENS, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reference[0]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == r.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_ignore_eos_gives_exactly_max_tokens(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.create(
        model=model, messages=image_messages(PICTURE), max_tokens=8, temperature=0,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert r.usage.completion_tokens == 8 and r.choices[0].finish_reason == "length"


def test_stop_string_cuts_the_text(client: openai.OpenAI, model: str, reference: tuple[str, int]) -> None:
    stop = reference[0][4:8]
    r = client.chat.completions.create(
        model=model, messages=image_messages(PICTURE), max_tokens=MAX_TOKENS, temperature=0, stop=[stop]
    )
    assert r.choices[0].message.content == reference[0][: reference[0].index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_concurrent_requests_are_all_answered(server: ServiceProcess, model: str) -> None:
    aclient = openai.AsyncOpenAI(base_url=server.http + "/v1", api_key="none", max_retries=0, timeout=30)

    async def both() -> list:
        return await asyncio.gather(*(
            aclient.chat.completions.create(
                model=model, messages=image_messages(png(64, 64, seed=s)), max_tokens=6, temperature=0,
                extra_body={"ignore_eos": True},
            ) for s in (2, 3)
        ))  # fmt: skip

    answers = asyncio.run(both())
    assert [a.usage.completion_tokens for a in answers] == [6, 6]


def pending(server: ServiceProcess) -> int:
    return json.loads(server.get("/health")[1])["pending"]


def test_queue_bound_and_cancel(server: ServiceProcess, client: openai.OpenAI, model: str) -> None:
    """One running (a long stream), one waiting; a third gets a 503; closing the stream frees the slot."""
    text = [{"role": "user", "content": "hi"}]
    long = client.chat.completions.create(
        model=model, messages=text, max_tokens=100_000, temperature=0, stream=True, extra_body={"ignore_eos": True}
    )  # fmt: skip
    it = iter(long)
    next(it), next(it)  # running
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(client.chat.completions.create, model=model, messages=text, max_tokens=4)
        deadline = time.monotonic() + 10
        while pending(server) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert pending(server) == 2
        with pytest.raises(openai.APIStatusError) as e:
            client.chat.completions.create(model=model, messages=text, max_tokens=4)
        assert e.value.status_code == 503 and e.value.body["code"] == "overloaded"
        next(it)
        assert not waiting.done()  # served one after the other
        long.close()
        assert waiting.result(timeout=20).usage.completion_tokens >= 1
    deadline = time.monotonic() + 10
    while pending(server) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pending(server) == 0


@pytest.mark.parametrize(
    "url, code",
    [
        ("data:image/png;base64,!!!", "invalid_image_url"),
        ("data:image/png;base64," + base64.b64encode(b"not a picture").decode(), "invalid_image"),
    ],
)
def test_bad_image_is_a_400(client: openai.OpenAI, model: str, url: str, code: str) -> None:
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model, messages=messages, max_tokens=4)
    assert e.value.body["code"] == code and e.value.body["param"].startswith("messages[0]")


def test_bad_json_is_a_400(server: ServiceProcess) -> None:
    req = urllib.request.Request(server.http + "/v1/chat/completions", data=b"{", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 400 and set(json.loads(e.value.read())["error"]) == {
        "message",
        "type",
        "param",
        "code",
    }


def test_a_request_past_its_deadline_gets_504_and_the_server_goes_on(ckpt: Path, tmp_path: Path) -> None:
    proc = start_service(
        "bench.hf_server", ckpt, "--port", "0", "--host", "127.0.0.1", "--dtype", "float32",
        "--torch-threads", "1", "--request-timeout-s", "1", log_dir=tmp_path,
    )  # fmt: skip
    try:
        client = openai.OpenAI(base_url=proc.http + "/v1", api_key="none", max_retries=0, timeout=30)
        model = client.models.list().data[0].id
        start = time.monotonic()
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": "go"}],
                max_tokens=20000,
                extra_body={"ignore_eos": True},
            )
        assert err.value.status_code == 504 and time.monotonic() - start < 10
        out = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "go"}], max_tokens=3
        )
        assert out.usage.completion_tokens <= 3
    finally:
        proc.stop()
