"""The router's side of the encoder protocol: send ``EncodeRequest``s, read the encoder's answers.

Results never come back here: they go to the prefill inbox named in each request. What does come
back is ``CacheMiss`` (resend those images with their bytes) and ``StageError`` for a request the
encoder could not parse. Used by the router, the tests and the benchmark.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from shared.multimodal.image import image_hash
from shared.wire import CacheMiss, DealerSocket, EncodeRequest, ImageInput, StageError


class EncoderClient:
    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = DealerSocket(address, bind=False, accept=[CacheMiss, StageError])

    def submit(
        self,
        request_id: str,
        images: Mapping[int, bytes],
        reply_to: str,
        *,
        timeout_s: float = 30.0,
        with_bytes: bool = True,
    ) -> EncodeRequest:
        """Ask for ``images`` (index -> bytes); ``with_bytes=False`` sends only their hashes."""
        request = build_request(request_id, images, reply_to, timeout_s=timeout_s, with_bytes=with_bytes)
        self.send(request)
        return request

    def send(self, request: EncodeRequest) -> None:
        self.sock.send(request)

    def recv(self, timeout: float) -> CacheMiss | StageError | None:
        return self.sock.recv(timeout)

    def close(self) -> None:
        self.sock.close()


def build_request(
    request_id: str,
    images: Mapping[int, bytes],
    reply_to: str,
    *,
    timeout_s: float = 30.0,
    with_bytes: bool = True,
    hashes: Mapping[int, str] | None = None,
) -> EncodeRequest:
    """An ``EncodeRequest`` for ``images`` (index -> bytes); pass ``hashes`` already computed to
    skip hashing (a router hashes each image once, when it loads it)."""
    return EncodeRequest(
        request_id=request_id,
        images=[
            ImageInput(i, hashes[i] if hashes else image_hash(data), data if with_bytes else None)
            for i, data in images.items()
        ],
        reply_to=reply_to,
        deadline=time.time() + timeout_s,
    )
