"""Bad requests get OpenAI-style 4xx errors (never a 5xx) and the cluster serves afterwards; a client
that disconnects mid-stream frees its request in the router, prefill and decode."""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest

from tests.cluster import wait_for
from tests.encoder.conftest import png

pytestmark = pytest.mark.cluster

GOOD_PNG = "data:image/png;base64," + base64.b64encode(png(32, 32)).decode()


def chat(model: str, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **extra}


def img(url: str) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": url}}],
        }
    ]


def corpus(m: str) -> list[tuple[str, object]]:
    """(path, body): body bytes are sent raw, anything else as JSON."""
    c = "/v1/chat/completions"
    many = [{"type": "image_url", "image_url": {"url": GOOD_PNG}}] * 5
    return [
        (c, b"{not json"),
        (c, b""),
        (c, b"[1, 2]"),
        (c, {"messages": [{"role": "user", "content": "hi"}]}),  # no model
        (c, {"model": m}),  # no messages
        (c, chat("no-such-model")),
        (c, {"model": m, "messages": []}),
        (c, {"model": m, "messages": "hello"}),
        (c, {"model": m, "messages": [{"role": "wizard", "content": "hi"}]}),
        (c, {"model": m, "messages": [{"content": "hi"}]}),
        (c, {"model": m, "messages": [{"role": "user", "content": 42}]}),
        (c, {"model": m, "messages": [{"role": "user", "content": [{"type": "audio", "audio": "x"}]}]}),
        (c, chat(m, max_tokens=0)),
        (c, chat(m, max_tokens="ten")),
        (c, chat(m, temperature=-1)),
        (c, chat(m, temperature="hot")),
        (c, chat(m, top_p=0)),
        (c, chat(m, top_p=1.5)),
        (c, chat(m, top_k=-5)),
        (c, chat(m, min_p=2)),
        (c, chat(m, n=0)),
        (c, chat(m, n=17)),
        (c, chat(m, seed=-1)),
        (c, chat(m, stop=[""])),
        (c, chat(m, stop=["a"] * 17)),
        (c, chat(m, top_logprobs=3)),  # without logprobs
        (c, chat(m, logprobs=True, top_logprobs=99)),
        (c, chat(m, max_tokens=5000)),  # past the 4096 context
        (c, {"model": m, "messages": [{"role": "user", "content": "word " * 5000}]}),
        (c, {"model": m, "messages": img("data:image/png;base64,!!!notbase64")}),
        (
            c,
            {
                "model": m,
                "messages": img("data:image/png;base64," + base64.b64encode(b"not an image").decode()),
            },
        ),
        (c, {"model": m, "messages": img("data:text/plain,hello")}),
        (c, {"model": m, "messages": img("ftp://example.com/a.png")}),
        (c, {"model": m, "messages": img("file:///etc/passwd")}),
        (c, {"model": m, "messages": img("http://127.0.0.1:1/a.png")}),  # loopback refused
        (c, {"model": m, "messages": img("http://169.254.169.254/latest")}),  # link-local refused
        (c, {"model": m, "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}, *many]}]}),
        (
            c,
            {
                "model": m,
                "messages": [
                    {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": GOOD_PNG}}]}
                ],
            },
        ),
        (c, {"model": m, "messages": [{"role": "user", "content": "<|image_pad|>"}]}),
        ("/v1/completions", {"model": m, "prompt": 5}),
        ("/v1/completions", {"model": m, "prompt": "x", "echo": True}),
        ("/v1/completions", {"model": m, "prompt": [10**9]}),
        ("/v1/completions", {"model": "nope", "prompt": "x"}),
        # asks this server cannot honour: refused, not ignored
        (c, chat(m, response_format={"type": "json_schema"})),
        (c, chat(m, response_format={"type": "yaml"})),
        (c, chat(m, structured_outputs={"json": {"type": "object"}, "regex": "a+"})),
        (c, chat(m, response_format={"type": "json_object"}, structured_outputs={"regex": "a+"})),
        (c, chat(m, structured_outputs={"regex": "(unclosed"})),  # the prefill worker's 400
        (
            c,
            chat(
                m,
                tools=[{"type": "function", "function": {"name": "f"}}],
                tool_choice={"type": "function", "function": {"name": "g"}},
            ),
        ),
        (c, chat(m, tools=[{"type": "function", "function": {"name": "not a name"}}])),
        (
            c,
            {
                "model": m,
                "messages": [
                    {
                        "role": "user",
                        "content": "x",
                        "tool_calls": [
                            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                        ],
                    }
                ],
            },
        ),
        (c, chat(m, logit_bias={"999999": 1})),
        (c, chat(m, min_tokens=3, max_tokens=2)),
        (c, chat(m, stop_token_ids=[-1])),
        ("/v1/completions", {"model": m, "prompt": "x", "suffix": "y"}),
        ("/v1/completions", {"model": m, "prompt": "x", "best_of": 2}),
        ("/v1/completions", {"model": m, "prompt": ["x"] * 5, "n": 16}),  # 80 generations, over 64
        ("/v1/completions", {"model": m, "prompt": ["x", [1, 2]]}),  # texts and ids mixed
        ("/v1/nothing", {}),
    ]


def test_bad_requests_get_openai_4xx_errors(cluster):
    cases = corpus(cluster.model)
    assert len(cases) >= 30
    statuses = []
    with httpx.Client(base_url=cluster.url, timeout=30) as http:
        for path, body in cases:
            if isinstance(body, bytes):
                r = http.post(path, content=body, headers={"content-type": "application/json"})
            else:
                r = http.post(path, json=body)
            assert 400 <= r.status_code < 500, (
                path,
                body if not isinstance(body, dict) else json.dumps(body)[:200],
                r.text,
            )
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code"} and err["message"], r.text
            assert r.headers["x-request-id"]
            statuses.append(r.status_code)
        print(f"\n{len(cases)} bad requests -> {sorted(set(statuses))}")
        ok = http.post("/v1/chat/completions", json=chat(cluster.model))
        assert ok.status_code == 200, ok.text
    assert cluster.metric("router", "router_requests_total", 'route="/v1/chat/completions",status="500"') == 0


@pytest.mark.parametrize("stream", [False, True])
def test_an_image_damaged_past_its_header_is_a_400_streamed_or_not(cluster, stream):
    """The router reads an image's header only; the encoder finds the damaged body, and the router
    answers before any token with the status and code of an image it refused itself."""
    data = bytearray(png(32, 32, seed=5))
    at = data.index(b"IDAT") + 8
    data[at : at + 32] = bytes(b ^ 0x5A for b in data[at : at + 32])
    url = "data:image/png;base64," + base64.b64encode(bytes(data)).decode()
    body = {"model": cluster.model, "messages": img(url), "max_tokens": 4, "stream": stream}
    with httpx.Client(base_url=cluster.url, timeout=30) as http:
        r = http.post("/v1/chat/completions", json=body)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == "invalid_image" and "PNG" in err["message"], err
        ok = http.post("/v1/chat/completions", json={**body, "messages": img(GOOD_PNG)})
        assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("image", [False, True])
def test_disconnect_mid_stream_frees_the_request_everywhere(cluster, image):
    decodes = ["decode-0", "decode-1"]
    content = img(GOOD_PNG) if image else [{"role": "user", "content": "tell a long story"}]
    body = {
        "model": cluster.model,
        "messages": content,
        "max_tokens": 3000,
        "stream": True,
        "ignore_eos": True,
    }
    aborts = cluster.metric("router", "router_aborts_total", 'reason="client gone"')
    with (
        httpx.Client(base_url=cluster.url, timeout=30) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as r,
    ):
        assert r.status_code == 200
        lines = []
        it = r.iter_lines()
        for line in it:
            lines += [line] if line.startswith("data: ") else []
            if len(lines) >= 4:
                break
        snap = cluster.get_json(cluster.url + "/debug/requests")
        assert snap["requests"], f"the request ended early: {lines[-2:]} ... {list(it)[-4:]}"

    # The response is closed: the client is gone.
    def freed() -> bool:
        return (
            not cluster.get_json(cluster.url + "/debug/requests")["requests"]
            and all(cluster.metric(d, "decode_running_requests") == 0 for d in decodes)
            and all(cluster.metric(d, "decode_queued_requests") == 0 for d in decodes)
            and cluster.metric("prefill-0", "prefill_running_requests") == 0
            and cluster.metric("prefill-0", "prefill_waiting_requests") == 0
            and cluster.metric("prefill-0", "prefill_free_blocks")
            == cluster.metric("prefill-0", "prefill_total_blocks")
        )

    assert wait_for(freed), cluster.logs()
    assert cluster.metric("router", "router_aborts_total", 'reason="client gone"') == aborts + 1
    tokens = sum(cluster.metric(d, "decode_tokens_total") for d in decodes)
    time.sleep(0.5)
    assert sum(cluster.metric(d, "decode_tokens_total") for d in decodes) == tokens  # nothing decodes on
    with httpx.Client(base_url=cluster.url, timeout=30) as http:
        assert http.post("/v1/chat/completions", json=chat(cluster.model)).status_code == 200
