"""In-process regression tests of what the HTTP fuzzer (``bench/fuzz_http.py``) found: request
fields and image URLs that raised past the router's checks (a 500, or a dead orchestrator thread)
now fail as a 400 naming the field. The same requests replayed over HTTP: test_http_fuzz.py."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from pydantic import BaseModel, ValidationError

from router.images import FetchLimits, load_image_url
from router.protocol import APIError, ChatCompletionRequest, CompletionRequest

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "cls, body, loc",
    [
        (ChatCompletionRequest, {"messages": [{"role": "user", "content": "a\ud800"}]}, ("messages", 0, "content")),
        (ChatCompletionRequest, {"messages": [{"role": "user", "content": "a", "name": "\udfff"}]}, ("messages", 0, "name")),
        (
            ChatCompletionRequest,
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "\udc80"}]}]},
            ("messages", 0, "content", "list[union[TextPart,ImagePart,VideoPart]]", 0, "TextPart", "text"),
        ),
        (CompletionRequest, {"prompt": "a\udfffb"}, ("prompt",)),
        (CompletionRequest, {"prompt": ["ok", "\ud800"]}, ("prompt",)),
        (CompletionRequest, {"prompt": "a", "stop": ["\ud83d"]}, ("stop",)),
        (CompletionRequest, {"prompt": "a", "top_k": 2**64}, ("top_k",)),
        (CompletionRequest, {"prompt": "a", "top_k": 2**31}, ("top_k",)),
    ],
)  # fmt: skip
def test_fields_that_broke_the_router_are_refused(cls: type[BaseModel], body: dict, loc: tuple) -> None:
    with pytest.raises(ValidationError) as e:
        cls.model_validate({"model": "m", **body})
    assert loc in [err["loc"] for err in e.value.errors()]


def test_valid_unicode_and_large_top_k_still_pass() -> None:
    req = CompletionRequest.model_validate({"model": "m", "prompt": ["é😀"], "stop": "ß", "top_k": 2**31 - 1})
    assert req.top_k == 2**31 - 1
    chat = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "日本"}]}]}
    ChatCompletionRequest.model_validate(chat)


@pytest.mark.parametrize(
    "url, allow_file, code",
    [
        ("http://" + "a" * 64 + ".com/a.png", False, "image_url_not_allowed"),  # IDNA: UnicodeError
        ("http://a..b/a.png", False, "image_url_not_allowed"),  # IDNA: an empty label
        ("http://[::1/a.png", False, "invalid_image_url"),  # urlsplit: ValueError
        ("http://8.8.8.8/\x01.png", False, "invalid_image_url"),  # httpx.InvalidURL, before connecting
        ("file:///a%00b", True, "invalid_image_url"),  # a NUL in the path: ValueError
        ("file:///\ud800", True, "invalid_image_url"),  # a lone surrogate in the path
        ("file://[::1/a", True, "invalid_image_url"),
    ],
)
def test_image_urls_that_raised_are_a_400(url: str, allow_file: bool, code: str) -> None:
    async def load() -> bytes:
        async with httpx.AsyncClient() as client:
            return await load_image_url(url, "p", FetchLimits(allow_file=allow_file), client)

    with pytest.raises(APIError) as e:
        asyncio.run(load())
    assert (e.value.status, e.value.param, e.value.code) == (400, "p", code)
