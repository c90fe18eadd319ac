"""The bundled demo model through a cluster started by the installed console script (``epd up``),
asked with the official openai client: streaming and not, base64 images, text only."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import openai
import pytest

from shared.assets import DEMO_MODEL_DIR as DEMO_MODEL
from tests.cluster import start_cluster
from tests.demo_pictures import data_url, shape_png

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    epd = shutil.which("epd", path=str(Path(sys.executable).parent))
    assert epd, "the epd console script is not installed in this environment (pip install -e .)"
    with start_cluster(DEMO_MODEL, tmp_path_factory.mktemp("demo"), "--decodes", "2", command=(epd,)) as c:
        yield openai.OpenAI(base_url=c.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def ask(client: openai.OpenAI, question: str, png: bytes | None = None, stream: bool = False) -> str:
    parts: list[dict] = [{"type": "text", "text": question}]
    if png is not None:
        parts.insert(0, {"type": "image_url", "image_url": {"url": data_url(png)}})
    kw = dict(model="demo", messages=[{"role": "user", "content": parts}], max_tokens=24, temperature=0)
    if not stream:
        return client.chat.completions.create(**kw).choices[0].message.content
    chunks = client.chat.completions.create(**kw, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("kind", "colour", "region"), [("circle", "red", "top left"), ("square", "blue", "bottom right")]
)
def test_demo_model_answers_about_a_picture(client, stream, kind, colour, region):
    png = shape_png(kind, colour, region)
    what = ask(client, "What is in the image?", png, stream)
    which = ask(client, f"What colour is the {kind}?", png, stream)
    where = ask(client, f"Where is the {kind}?", png, stream)
    print(f"\n{colour} {kind} {region} (stream={stream}): {what!r} / {which!r} / {where!r}")
    assert kind in what.lower() and colour in what.lower() + which.lower()
    assert colour in which.lower()
    assert region in where.lower()


def test_demo_model_answers_text_only(client):
    for stream in (False, True):
        reply = ask(client, "hello", stream=stream)
        print(f"\nhello (stream={stream}) -> {reply!r}")
        assert "picture" in reply.lower()
