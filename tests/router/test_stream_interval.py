"""``--stream-interval`` on the decode worker: a request's tokens reach the router N to a record
and the client N to an SSE chunk, after a first chunk of exactly one token (prefill's, never held);
the streamed text equals the non-streamed one and a stop string that crosses chunk boundaries
still cuts the same text. The N=16 cluster also paces its decode steps (``--step-interval-ms``):
same text, steps no closer than the interval."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.cluster import EpdCluster, start_cluster

pytestmark = pytest.mark.cluster

MAX_TOKENS = 40
PACED = 16  # the stream interval whose cluster also runs with a step interval
STEP_INTERVAL_MS = 25


@pytest.fixture(scope="module", params=[1, 4, 16])
def interval_cluster(request, ckpt: Path, tmp_path_factory) -> Iterator[tuple[int, EpdCluster]]:
    n = request.param
    paced = [f"--decode-arg=--step-interval-ms={STEP_INTERVAL_MS}"] if n == PACED else []
    with start_cluster(
        ckpt, tmp_path_factory.mktemp(f"interval{n}"), "--dtype", "float32",
        f"--decode-arg=--stream-interval={n}", "--decode-arg=--no-compile-decode",
        "--router-arg=--heartbeat-timeout-s=15", *paced,
    ) as c:  # fmt: skip
        yield n, c


def chunks(client: openai.OpenAI, model: str, **kw) -> list[tuple[str, int]]:
    """(text, tokens) of every streamed chunk that carries tokens."""
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Go on"}], temperature=0, max_tokens=MAX_TOKENS,
        stream=True, logprobs=True, extra_body={"ignore_eos": True}, **kw,
    )  # fmt: skip
    out = []
    for c in stream:
        if c.choices and c.choices[0].logprobs and c.choices[0].logprobs.content:
            out.append((c.choices[0].delta.content or "", len(c.choices[0].logprobs.content)))
    return out


def test_tokens_come_n_to_a_chunk_and_the_text_is_the_same(interval_cluster) -> None:
    n, cluster = interval_cluster
    client = openai.OpenAI(base_url=cluster.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    got = chunks(client, cluster.model)
    sizes = [k for _, k in got]
    assert sum(sizes) == MAX_TOKENS
    assert sizes[0] == 1  # the first token is never held
    rest = sizes[1:]
    assert all(k == n for k in rest[:-1]) and 1 <= rest[-1] <= n, sizes  # the last record is short
    whole = client.chat.completions.create(
        model=cluster.model, messages=[{"role": "user", "content": "Go on"}], temperature=0,
        max_tokens=MAX_TOKENS, extra_body={"ignore_eos": True},
    )  # fmt: skip
    text = "".join(t for t, _ in got)
    assert text == whole.choices[0].message.content

    # a stop string across the boundary between two chunks cuts the same text as without chunks
    cuts = [len("".join(t for t, _ in got[: i + 1])) for i in range(1, len(got) - 1)]
    edge = next(c for c in cuts if 2 <= c <= len(text) - 2 and text[c - 2 : c + 2].strip())
    stop = text[edge - 2 : edge + 2]
    first = text.index(stop)
    cut = client.chat.completions.create(
        model=cluster.model, messages=[{"role": "user", "content": "Go on"}], temperature=0,
        max_tokens=MAX_TOKENS, stop=[stop], stream=True, extra_body={"ignore_eos": True},
    )  # fmt: skip
    streamed = "".join(c.choices[0].delta.content or "" for c in cut if c.choices)
    assert streamed == text[:first]


def test_a_step_interval_spaces_the_decode_steps(interval_cluster) -> None:
    n, cluster = interval_cluster
    if n != PACED:
        pytest.skip("only this cluster paces its steps")
    body = {
        "model": cluster.model, "messages": [{"role": "user", "content": "Go on"}], "temperature": 0,
        "max_tokens": MAX_TOKENS, "ignore_eos": True,
    }  # fmt: skip
    r = httpx.post(f"{cluster.url}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    decode = [sp["duration"] for sp in r.json()["timeline"]["spans"] if sp["stage"] == "decode"]
    # the first token is prefill's; the other 39 come from 39 steps: 38 intervals at least
    assert len(decode) == 1 and decode[0] >= (MAX_TOKENS - 2) * STEP_INTERVAL_MS / 1000, decode
