"""Image URLs to bytes: data URLs, http(s) downloads with limits, ``file://`` when allowed.

Every failure is an ``APIError`` (400) naming the offending part. Downloads are bounded in bytes
(``max_image_bytes``, checked while streaming) and time (``fetch_timeout_s`` for the whole
transfer), follow no redirects, and are refused when the host resolves to a loopback, private,
link-local, multicast or reserved address, unless ``allow_private_urls`` is set. (The address is
checked before connecting; a DNS answer that changes between the check and the connection is not
defended against.)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

from router.protocol import APIError, bad_request


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int = 20 << 20
    timeout_s: float = 10.0
    allow_private: bool = False
    allow_file: bool = False


def _too_big(param: str, limits: FetchLimits) -> APIError:
    return bad_request(f"image is larger than {limits.max_bytes} bytes", param, "image_too_large")


def decode_data_url(url: str, param: str, limits: FetchLimits) -> bytes:
    head, sep, payload = url.partition(",")
    if not sep or not head.startswith("data:"):
        raise bad_request(
            "malformed data URL (expected data:<mime>;base64,<data>)", param, "invalid_image_url"
        )
    if not head.endswith(";base64"):
        raise bad_request("only base64 data URLs are supported", param, "invalid_image_url")
    if len(payload) * 3 // 4 > limits.max_bytes + 3:
        raise _too_big(param, limits)
    try:
        data = base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("the data URL is not valid base64", param, "invalid_image_url") from None
    if len(data) > limits.max_bytes:
        raise _too_big(param, limits)
    return data


def _is_public(host: str) -> bool:
    """True when every address ``host`` resolves to is a public unicast address."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if not ip.is_global or ip.is_multicast:
            return False
    return bool(infos)


async def fetch_http(url: str, param: str, limits: FetchLimits, client: httpx.AsyncClient) -> bytes:
    host = urlsplit(url).hostname
    if not host:
        raise bad_request("image URL has no host", param, "invalid_image_url")
    if not limits.allow_private and not await asyncio.to_thread(_is_public, host):
        raise bad_request(f"image URL host {host!r} is not a public address", param, "image_url_not_allowed")
    data = bytearray()
    try:
        async with asyncio.timeout(limits.timeout_s):
            async with client.stream("GET", url, follow_redirects=False) as resp:
                if resp.status_code != 200:
                    raise bad_request(
                        f"fetching the image failed: HTTP {resp.status_code}", param, "image_fetch_failed"
                    )
                declared = resp.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limits.max_bytes:
                    raise _too_big(param, limits)
                async for chunk in resp.aiter_bytes():
                    data += chunk
                    if len(data) > limits.max_bytes:
                        raise _too_big(param, limits)
    except TimeoutError:
        raise bad_request(
            f"fetching the image took over {limits.timeout_s:g}s", param, "image_fetch_failed"
        ) from None
    except httpx.HTTPError as e:
        raise bad_request(
            f"fetching the image failed: {type(e).__name__}", param, "image_fetch_failed"
        ) from None
    return bytes(data)


def read_file_url(url: str, param: str, limits: FetchLimits) -> bytes:
    if not limits.allow_file:
        raise bad_request("file:// image URLs are disabled", param, "image_url_not_allowed")
    path = Path(unquote(urlsplit(url).path))
    try:
        if path.stat().st_size > limits.max_bytes:
            raise _too_big(param, limits)
        return path.read_bytes()
    except OSError:
        raise bad_request("cannot read the image file", param, "invalid_image_url") from None


async def load_image_url(url: str, param: str, limits: FetchLimits, client: httpx.AsyncClient) -> bytes:
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return decode_data_url(url, param, limits)
    if scheme in ("http", "https"):
        return await fetch_http(url, param, limits, client)
    if scheme == "file":
        return read_file_url(url, param, limits)
    raise bad_request("image URLs must be data:, http(s): or file: URLs", param, "invalid_image_url")
