"""Access and image URLs: Bearer API keys, request ids, and http(s) image downloads (limits on size,
time, status and redirects; loopback refused unless allowed; ``file://`` off by default).

A colocated server (one process) runs with keys and ``--allow-private-urls``; a local HTTP server
on loopback serves the pictures. The refusal of loopback URLs is checked on the package's cluster,
which runs with the defaults.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cluster import EpdCluster, start_cluster
from tests.demo_pictures import data_url
from tests.encoder.conftest import png

pytestmark = pytest.mark.cluster

PICTURE = png(120, 90, seed=3)
BIG = png(400, 400, seed=4) + b"\0" * 300_000


class Pictures(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        if self.path == "/slow.png":
            time.sleep(3)
        if self.path == "/redirect.png":
            self.send_response(302)
            self.send_header("Location", "/ok.png")
            self.end_headers()
            return
        body = {"/ok.png": PICTURE, "/slow.png": PICTURE, "/big.png": BIG}.get(self.path)
        self.send_response(200 if body else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the router stopped reading
            self.wfile.write(body or b"")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def pictures() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Pictures)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def guarded(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EpdCluster]:
    with start_cluster(
        ckpt, tmp_path_factory.mktemp("guarded"), "--colocated", "--dtype", "float32",
        "--router-arg=--api-keys=key-one,key-two", "--router-arg=--allow-private-urls",
        "--router-arg=--max-image-bytes=200000", "--router-arg=--fetch-timeout-s=1",
        "--router-arg=--max-model-len=4096",
    ) as c:  # fmt: skip
        yield c


def test_api_keys_and_request_ids(guarded):
    models = httpx.get(guarded.url + "/v1/models", headers={"Authorization": "Bearer key-one"}).json()
    model = models["data"][0]["id"]
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "key-one"}):
        r = httpx.post(guarded.url + "/v1/chat/completions", json=body, headers=headers, timeout=30)
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "invalid_api_key" and r.headers["x-request-id"]
    ok = httpx.post(
        guarded.url + "/v1/chat/completions", json=body, timeout=30,
        headers={"Authorization": "Bearer key-two", "X-Request-Id": "my-trace-42"},
    )  # fmt: skip
    assert ok.status_code == 200, ok.text
    assert ok.headers["x-request-id"] == "my-trace-42" and "my-trace-42" in ok.json()["id"]
    # a client that reuses its id gets distinct requests (workers key requests by it, across routers)
    again = httpx.post(
        guarded.url + "/v1/chat/completions", json=body, timeout=30,
        headers={"Authorization": "Bearer key-two", "X-Request-Id": "my-trace-42"},
    )  # fmt: skip
    assert again.status_code == 200 and again.json()["id"] != ok.json()["id"]
    assert httpx.get(guarded.url + "/health").status_code == 200  # probes need no key
    assert "my-trace-42" in (guarded.log_dir / "router.log").read_text()  # the id is in the log lines


def test_http_image_urls_with_limits(guarded, pictures):
    model = httpx.get(guarded.url + "/v1/models", headers={"Authorization": "Bearer key-one"}).json()["data"][
        0
    ]["id"]

    def ask(image_url: str) -> httpx.Response:
        body = {
            "model": model, "max_tokens": 6, "temperature": 0,
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": image_url}},
            ]}],
        }  # fmt: skip
        return httpx.post(
            guarded.url + "/v1/chat/completions",
            json=body,
            headers={"Authorization": "Bearer key-two"},
            timeout=60,
        )

    fetched, inline = ask(pictures + "/ok.png"), ask(data_url(PICTURE))
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["choices"][0]["message"] == inline.json()["choices"][0]["message"]
    assert fetched.json()["usage"] == inline.json()["usage"]
    start = time.monotonic()
    cases = {
        "/big.png": "image_too_large",
        "/slow.png": "image_fetch_failed",
        "/missing.png": "image_fetch_failed",
        "/redirect.png": "image_fetch_failed",
    }
    for path, code in cases.items():
        r = ask(pictures + path)
        assert r.status_code == 400 and r.json()["error"]["code"] == code, (path, r.text)
        print(f"\n{path}: {r.json()['error']['message']}")
    assert time.monotonic() - start < 10  # the slow one was cut at --fetch-timeout-s=1
    r = ask("file:///etc/hostname")
    assert r.status_code == 400 and r.json()["error"]["code"] == "image_url_not_allowed"
    assert ask(pictures + "/ok.png").status_code == 200  # still serving


def test_loopback_image_urls_are_refused_by_default(cluster, pictures):
    model = httpx.get(cluster.url + "/v1/models").json()["data"][0]["id"]
    body = {
        "model": model, "max_tokens": 4,
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": pictures + "/ok.png"}}]}],
    }  # fmt: skip
    r = httpx.post(cluster.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "image_url_not_allowed", r.text
    assert "127.0.0.1" in r.json()["error"]["message"]
