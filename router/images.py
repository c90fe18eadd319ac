"""Image and video URLs to bytes: data URLs, http(s) downloads with limits, ``file://`` when allowed.

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
    kind: str = "image"  # what is fetched ("image", "video"): messages and error codes name it


def _too_big(param: str, limits: FetchLimits) -> APIError:
    return bad_request(
        f"{limits.kind} is larger than {limits.max_bytes} bytes", param, f"{limits.kind}_too_large"
    )


def split_data_url(url: str, param: str, limits: FetchLimits) -> tuple[str, str]:
    """(media type, base64 payload) of a ``data:<mime>;base64,<data>`` URL."""
    head, sep, payload = url.partition(",")
    if not sep or not head.startswith("data:"):
        raise bad_request(
            "malformed data URL (expected data:<mime>;base64,<data>)", param, f"invalid_{limits.kind}_url"
        )
    if not head.endswith(";base64"):
        raise bad_request("only base64 data URLs are supported", param, f"invalid_{limits.kind}_url")
    if len(payload) * 3 // 4 > limits.max_bytes + 3:
        raise _too_big(param, limits)
    return head[5:-7].lower(), payload


def b64_payload(payload: str, param: str, limits: FetchLimits) -> bytes:
    try:
        data = base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("the data URL is not valid base64", param, f"invalid_{limits.kind}_url") from None
    if len(data) > limits.max_bytes:
        raise _too_big(param, limits)
    return data


def decode_data_url(url: str, param: str, limits: FetchLimits) -> bytes:
    return b64_payload(split_data_url(url, param, limits)[1], param, limits)


def _is_public(host: str) -> bool:
    """True when every address ``host`` resolves to is a public unicast address."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, ValueError):  # ValueError: no DNS name (IDNA: an empty or 64-character label, NUL)
        return False
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if not ip.is_global or ip.is_multicast:
            return False
    return bool(infos)


def _malformed(param: str, limits: FetchLimits) -> APIError:
    return bad_request(f"malformed {limits.kind} URL", param, f"invalid_{limits.kind}_url")


async def fetch_http(url: str, param: str, limits: FetchLimits, client: httpx.AsyncClient) -> bytes:
    try:
        host = urlsplit(url).hostname
    except ValueError:  # an unclosed IPv6 bracket, say
        raise _malformed(param, limits) from None
    if not host:
        raise bad_request(f"{limits.kind} URL has no host", param, f"invalid_{limits.kind}_url")
    if not limits.allow_private and not await asyncio.to_thread(_is_public, host):
        raise bad_request(
            f"{limits.kind} URL host {host!r} is not a public address",
            param,
            f"{limits.kind}_url_not_allowed",
        )
    data = bytearray()
    try:
        async with asyncio.timeout(limits.timeout_s):
            async with client.stream("GET", url, follow_redirects=False) as resp:
                if resp.status_code != 200:
                    raise bad_request(
                        f"fetching the {limits.kind} failed: HTTP {resp.status_code}", param,
                        f"{limits.kind}_fetch_failed",
                    )  # fmt: skip
                declared = resp.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limits.max_bytes:
                    raise _too_big(param, limits)
                async for chunk in resp.aiter_bytes():
                    data += chunk
                    if len(data) > limits.max_bytes:
                        raise _too_big(param, limits)
    except TimeoutError:
        raise bad_request(
            f"fetching the {limits.kind} took over {limits.timeout_s:g}s",
            param,
            f"{limits.kind}_fetch_failed",
        ) from None
    except httpx.InvalidURL:  # not an HTTPError: control characters, say; raised before connecting
        raise _malformed(param, limits) from None
    except httpx.HTTPError as e:
        raise bad_request(
            f"fetching the {limits.kind} failed: {type(e).__name__}", param, f"{limits.kind}_fetch_failed"
        ) from None
    return bytes(data)


def read_file_url(url: str, param: str, limits: FetchLimits) -> bytes:
    if not limits.allow_file:
        raise bad_request(f"file:// {limits.kind} URLs are disabled", param, f"{limits.kind}_url_not_allowed")
    try:
        path = Path(unquote(urlsplit(url).path))
        if path.stat().st_size > limits.max_bytes:
            raise _too_big(param, limits)
        return path.read_bytes()
    except (OSError, ValueError):  # ValueError: a NUL or a lone surrogate in the path, a bad netloc
        raise bad_request(
            f"cannot read the {limits.kind} file", param, f"invalid_{limits.kind}_url"
        ) from None


async def load_image_url(url: str, param: str, limits: FetchLimits, client: httpx.AsyncClient) -> bytes:
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return decode_data_url(url, param, limits)
    if scheme in ("http", "https"):
        return await fetch_http(url, param, limits, client)
    if scheme == "file":
        return read_file_url(url, param, limits)
    raise bad_request(
        f"{limits.kind} URLs must be data:, http(s): or file: URLs", param, f"invalid_{limits.kind}_url"
    )
