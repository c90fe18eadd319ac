"""An engine step that raises fails the requests in that engine, and the worker goes on serving.

Before, the serving loop logged the exception and ran the same batch again: every later step raised
too, and the worker's requests hung until their deadlines (the HTTP fuzzer found one such request:
a top-p that rounds to 0 in float32). The prefill and decode servers run here in threads of the
test process, on real sockets, with the test playing the router, so that one engine step can be
made to fail.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.clients.prefill import DecodeTarget, DisaggClient
from services.common.engine_setup import build_engine
from services.common.http import Health
from services.decode.config import parse_config as decode_config
from services.decode.metrics import DecodeMetrics
from services.decode.server import DecodeServer
from services.prefill.config import parse_config as prefill_config
from services.prefill.metrics import PrefillMetrics
from services.prefill.server import PrefillServer
from shared.engine import Engine, SamplingParams
from shared.models.config import load_config
from shared.transfer import build_receiver, build_sender
from shared.wire.messages import ErrorKind, FinishReason
from tests.engine.conftest import SPEC

pytestmark = pytest.mark.slow

COMMON = ("--dtype", "float32", "--http-port", "0", "--host", "127.0.0.1", "--no-compile-decode")


class Workers:
    def __init__(self, ckpt: Path) -> None:
        self.stop = threading.Event()
        self.client: DisaggClient | None = None
        pcfg = prefill_config(["--model", str(ckpt), "--port", "0", "--inbox-port", "0", *COMMON])
        self.prefill_engine = build_engine(pcfg.model, pcfg.device, pcfg.dtype, pcfg.engine)
        self.prefill = PrefillServer(
            pcfg, self.prefill_engine, build_sender(pcfg.transfer, self.prefill_engine.pool, pcfg.host),
            PrefillMetrics(), Health(),
        )  # fmt: skip
        self.client = DisaggClient(self.prefill.endpoint, self.prefill.inbox_endpoint, None, 0, 2)
        dcfg = decode_config(
            ["--model", str(ckpt), "--port", "0", "--kv-port", "0", "--report-to", self.client.reply_to,
             "--report-interval-s", "0.2", *COMMON]
        )  # fmt: skip
        self.decode_engine = build_engine(dcfg.model, dcfg.device, dcfg.dtype, dcfg.engine)
        receiver = build_receiver(
            dcfg.transfer, dcfg.address(dcfg.kv_port), self.decode_engine.pool, "127.0.0.1", "decode"
        )
        self.decode = DecodeServer(dcfg, self.decode_engine, receiver, DecodeMetrics(), Health())
        self.target = DecodeTarget(receiver.address, self.decode.endpoint)
        self.threads = [
            threading.Thread(target=s.serve, args=(self.stop,), daemon=True)
            for s in (self.prefill, self.decode)
        ]
        for t in self.threads:
            t.start()
        self.vocab = load_config(ckpt).text.vocab_size

    def run(self, rid: str, max_tokens: int = 8) -> Any:
        assert self.client is not None
        self.client.submit(
            rid, list(range(5, 45)), [], SamplingParams(temperature=0, max_tokens=max_tokens), self.target
        )
        return self.client.collect(60)[rid]

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)
        for s in (self.prefill, self.decode):
            s.close()
        if self.client is not None:
            self.client.close()


@pytest.fixture(scope="module")
def workers(tiny_checkpoint: Callable[..., Path]) -> Iterator[Workers]:
    w = Workers(tiny_checkpoint(**SPEC))
    try:
        yield w
    finally:
        w.close()


def fail_once(engine: Engine, monkeypatch: pytest.MonkeyPatch, when: Callable[[], bool]) -> list[bool]:
    """Make ``engine.step`` raise the first time it runs with ``when()`` true; the list records it."""
    raised: list[bool] = []
    real = engine.step

    def step():
        if not raised and when():
            raised.append(True)
            raise RuntimeError("injected engine failure")
        return real()

    monkeypatch.setattr(engine, "step", step)
    return raised


def test_a_failed_prefill_step_fails_its_requests_and_the_next_one_is_served(
    workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert workers.run("before").finish_reason is FinishReason.LENGTH
    raised = fail_once(workers.prefill_engine, monkeypatch, workers.prefill_engine.has_unfinished)
    failed = workers.run("poisoned")
    assert raised and failed.error is not None and failed.error.kind is ErrorKind.INTERNAL, failed
    assert "injected engine failure" in failed.error.message
    after = workers.run("after")
    assert after.finish_reason is FinishReason.LENGTH and len(after.tokens) == 8, after
    assert not workers.prefill_engine.has_unfinished()


def test_a_failed_decode_step_fails_its_requests_and_the_next_one_is_served(
    workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    raised = fail_once(workers.decode_engine, monkeypatch, lambda: bool(workers.decode.routes))
    failed = workers.run("poisoned-decode", max_tokens=30)
    assert raised and failed.error is not None and failed.error.kind is ErrorKind.INTERNAL, failed
    assert len(failed.tokens) >= 1  # prefill's first token came before decode failed
    after = workers.run("after-decode")
    assert after.finish_reason is FinishReason.LENGTH and len(after.tokens) == 8, after
    assert not workers.decode_engine.has_unfinished() and not workers.decode.routes
