"""The HTTP API fuzzed from its own OpenAPI schema (``bench/fuzz_http.py``: hypothesis, fixed seed)
against a real ``epd up`` cluster on a tiny checkpoint (one encoder, prefill and decode worker, small
KV pools): no 5xx but 503 and 504, every error in OpenAI's shape, well-formed SSE, the router alive,
and afterwards every KV block free and the router's in-flight gauge at 0. Then the requests the
fuzzer found that broke the router, replayed one by one.

The long run: ``python -m bench.fuzz_http --requests 2000``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from bench.fuzz_http import cluster_flags, error_shape, fuzz, pool_leaks, settle, worker_urls
from bench.fuzz_requests import MiB
from tests.cluster import EpdCluster, start_cluster
from tests.engine.conftest import SPEC

pytestmark = pytest.mark.cluster

REQUESTS = 500  # ~10-30 s on two shared cores, beside the cluster; the bench sends thousands


@pytest.fixture(scope="module")
def cluster(
    tiny_checkpoint: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EpdCluster]:
    ckpt = tiny_checkpoint(**SPEC)
    with start_cluster(ckpt, tmp_path_factory.mktemp("fuzz-http"), *cluster_flags(colocated=False)) as c:
        yield c


def test_fuzzed_requests_hold_the_properties(cluster: EpdCluster) -> None:
    report = fuzz(cluster.url, REQUESTS, seed_=0, concurrency=4, max_body=2 * MiB)
    report.leaks = settle(lambda: pool_leaks(cluster.url, worker_urls(cluster.log_dir)))
    summary = "\n".join(report.lines())
    print("\n" + summary)
    assert report.sent >= REQUESTS
    assert report.ok, summary + "\n" + cluster.logs()


def _image(url: str) -> dict:
    return {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}


IMAGE_PARAM = "messages[0].content[0].image_url.url"
# (route, body without the model, the error's param, its code): each was a 500, or worse
FOUND: dict[str, tuple[str, dict, str, str]] = {
    "lone surrogate in chat text (tokenizer TypeError)": (
        "/v1/chat/completions", {"messages": [{"role": "user", "content": "a\ud800"}]}, "messages.0.content",
        "invalid_value",
    ),
    "lone surrogate in a prompt": ("/v1/completions", {"prompt": "a\udfffb"}, "prompt", "invalid_value"),
    "image host with a 64-character label (IDNA UnicodeError)": (
        "/v1/chat/completions", _image("http://" + "a" * 64 + ".com/a.png"), IMAGE_PARAM, "image_url_not_allowed",
    ),
    "image URL with an unclosed IPv6 bracket (ValueError)": (
        "/v1/chat/completions", _image("http://[::1/a.png"), IMAGE_PARAM, "invalid_image_url",
    ),
    "image URL with a control character (httpx.InvalidURL)": (
        "/v1/chat/completions", _image("http://8.8.8.8/\x01.png"), IMAGE_PARAM, "invalid_image_url",
    ),
    "top_k past 64 bits (killed the orchestrator's thread in msgpack)": (
        "/v1/completions", {"prompt": "hi", "top_k": 2**64}, "top_k", "invalid_value",
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(FOUND))
def test_what_the_fuzzer_found_is_a_400(cluster: EpdCluster, name: str) -> None:
    route, body, param, code = FOUND[name]
    model = httpx.get(cluster.url + "/v1/models").json()["data"][0]["id"]
    data = json.dumps({"model": model, "max_tokens": 2, **body}).encode()  # \ud800 escapes kept
    r = httpx.post(
        cluster.url + route, content=data, headers={"content-type": "application/json"}, timeout=60
    )
    assert r.status_code == 400, r.text
    assert error_shape(r.content) is None
    assert (r.json()["error"]["param"], r.json()["error"]["code"]) == (param, code)
    ok = httpx.post(
        cluster.url + "/v1/completions", json={"model": model, "prompt": "hi", "max_tokens": 2}, timeout=60
    )
    assert ok.status_code == 200, ok.text  # and the router still serves
