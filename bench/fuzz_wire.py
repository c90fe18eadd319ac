"""The wire fuzzer: mutated messages of every type against a live cluster, which must come out unharmed.

    python -m bench.fuzz_wire --messages 1000 [--seed 0] [--model DIR] [--log-dir DIR]

starts ``epd up`` (one encoder, prefill, decode worker and the router; a tiny random checkpoint
unless ``--model``), or fuzzes a running one (``fuzz(log_dir, url, ...)``, as the tests do). Each
message is a valid one of a random type (``bench.fuzz_wire_messages``) sent, mutated or not, to a socket
that takes that type (or, sometimes, to one that does not): the encoder's and prefill's ROUTERs,
the prefill inbox, the decode worker's KV ROUTER and control PULL, the router's inbox. Every so
often a raw ZMTP connection announces a frame larger than any socket's limit instead.

Checked: every message the fuzzer's own decoding rejects is answered ``bad_request`` on a ROUTER
and counted in the service's ``*_malformed_messages_total`` (PULL sockets too); every oversized
frame is a counted drop (``*_oversized_drops_total``); no internal error, no traceback in the
logs, every service alive; after the fuzzer aborts what it started and stays silent (so the
services take its "router" as gone), every KV block is free; a greedy request through the router
answers what it answered before.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import struct
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from bench.fuzz_wire_messages import MUTATIONS, Templates, frames_of, mutate
from bench.fuzz_wire_report import Report, snapshot
from shared.models.config import load_config
from shared.wire import WireError, decode
from shared.wire.messages import (
    AbortRequest,
    EncodeRequest,
    ErrorKind,
    ImageEmbeddingResult,
    KVAbort,
    KVDone,
    KVGrant,
    KVLayer,
    KVProgress,
    KVReserve,
    PrefillRequest,
    RouterHeartbeat,
    StageError,
    TokenBatch,
)
from shared.wire.schema import MESSAGES

OVERSIZED_EVERY = 25  # one raw oversized frame per this many messages
REPLY_TIMEOUT_S = 10.0
SETTLE_TIMEOUT_S = 90.0


@dataclass
class Target:
    name: str
    service: str  # whose metrics count what it receives
    address: str
    accept: tuple[type, ...]
    router: bool  # a ROUTER answers malformed messages
    sock: Any = None
    expected: int = 0  # malformed messages sent (as the fuzzer's own decoding judges)
    answered: int = 0  # "malformed" replies received


def targets(log_dir: Path) -> list[Target]:
    info = {n: json.loads((log_dir / f"{n}.ready.json").read_text()) for n in ("encoder-0", "prefill-0", "decode-0", "router")}  # fmt: skip
    enc, pre, dec = info["encoder-0"], info["prefill-0"], info["decode-0"]
    return [
        Target("encoder", "encoder", enc["zmq"], (EncodeRequest, RouterHeartbeat), True),
        Target("prefill", "prefill", pre["zmq"], (PrefillRequest, AbortRequest, RouterHeartbeat), True),
        Target("prefill-inbox", "prefill", pre["inbox"], (ImageEmbeddingResult, StageError), False),
        Target("decode-kv", "decode", dec["kv"], (KVReserve, KVLayer, KVProgress, KVDone, KVAbort), True),
        Target("decode-control", "decode", dec["control"], (AbortRequest, RouterHeartbeat), False),
        Target("router-inbox", "router", info["router"]["inbox"], (TokenBatch, StageError), False),
    ]


# ----- a raw ZMTP 3.0 peer, for frames ZMQ itself would refuse to send -------------------------------
def _greeting() -> bytes:
    return b"\xff" + b"\0" * 8 + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\0") + b"\0" * 32


def _ready(socket_type: bytes) -> bytes:
    body = b"\x05READY\x0bSocket-Type" + struct.pack(">I", len(socket_type)) + socket_type
    return bytes([0x04, len(body)]) + body


def send_oversized(address: str, router: bool, timeout: float = 10.0, settle: float = 0.2) -> bool:
    """Complete a handshake, stay connected ``settle`` seconds (the service's monitor sees a
    connection dropped within milliseconds of its accept too late to name it), announce a
    2**62-byte frame and wait for the service to hang up (True)."""
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout) as s:
        s.sendall(_greeting() + _ready(b"DEALER" if router else b"PUSH"))
        time.sleep(settle)
        s.sendall(b"\x02" + struct.pack(">Q", 1 << 62))
        try:
            while s.recv(4096):  # the service's greeting and READY, then its hang-up
                pass
        except ConnectionResetError:
            pass
        except TimeoutError:
            return False
    return True


# ----- the run -------------------------------------------------------------------------------------
@dataclass
class Fuzzer:
    log_dir: Path
    url: str  # the router's, with no /v1
    model: Path  # the cluster's checkpoint
    seed: int = 0
    report: Report = field(default_factory=Report)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.ctx: zmq.Context = zmq.Context.instance()
        self.sink = self.ctx.socket(zmq.PULL)
        self.sink.bind("tcp://127.0.0.1:*")
        sink = self.sink.getsockopt_string(zmq.LAST_ENDPOINT)
        self.targets = targets(self.log_dir)
        for t in self.targets:
            t.sock = self.ctx.socket(zmq.DEALER if t.router else zmq.PUSH)
            t.sock.setsockopt(zmq.LINGER, 0)
            t.sock.connect(t.address)
        by_name = {t.name: t.address for t in self.targets}
        self.templates = Templates(
            load_config(self.model), sink, by_name["decode-kv"], by_name["prefill-inbox"], self.seed
        )
        self.reserved: dict[str, int] = {}  # valid reservations sent: request id -> tokens

    def close(self) -> None:
        for t in self.targets:
            t.sock.close(linger=0)
        self.sink.close(linger=0)

    def run(self, messages: int) -> Report:
        rep = self.report
        before = snapshot(self.log_dir)
        rep.greedy_before = greedy(self.url)
        for t in self.targets:  # the services learn the fuzzer's inbox as a router's: gone once it stops
            if RouterHeartbeat in t.accept and t.name != "router-inbox":
                self._send(t, frames_of(self.templates.router_heartbeat(self.rng)))
        start = time.monotonic()
        for i in range(messages):
            if i % OVERSIZED_EVERY == OVERSIZED_EVERY - 1:
                self._oversized()
            else:
                self._one()
            self._drain()
        rep.seconds = time.monotonic() - start
        self._clean_up()
        self._settle()
        expected = Counter[str]()
        for t in self.targets:
            expected[t.service] += t.expected
        rep.check(self.log_dir, before, snapshot(self.log_dir), expected)
        rep.greedy_after = greedy(self.url)
        return rep

    def _one(self) -> None:
        rng, tpl = self.rng, self.templates
        mtype = rng.choice(sorted(MESSAGES))
        takers = [t for t in self.targets if MESSAGES[mtype].cls in t.accept]
        if not takers or rng.random() < 0.1:  # the wrong socket for this type
            takers = [t for t in self.targets if t.name != "router-inbox"]
        target = rng.choice(takers)
        msg = tpl.make[mtype](rng)
        kind = rng.choices(MUTATIONS, [3 if k == "valid" else 1 for k in MUTATIONS])[0]  # valid: deeper
        frames = mutate(frames_of(msg), kind, rng)
        try:
            decoded = decode(frames, target.accept)
            malformed = False
        except WireError:
            decoded, malformed = None, True
        if isinstance(decoded, KVReserve):
            self.reserved[decoded.request_id] = len(decoded.token_ids)
        self.report.sent[(mtype, kind)] += 1
        self._send(target, frames)
        if malformed:
            target.expected += 1
            if target.router:
                self._await_answer(target)

    def _oversized(self) -> None:
        target = self.rng.choice([t for t in self.targets if t.service != "router"])
        self.report.sent[("(raw zmtp)", "oversized")] += 1
        self.report.oversized[target.service] += 1
        if not send_oversized(target.address, target.router):
            self.report.problems.append(f"{target.name} did not drop an oversized frame")

    def _send(self, target: Target, frames: list[bytes]) -> None:
        if not target.sock.poll(int(REPLY_TIMEOUT_S * 1000), zmq.POLLOUT):
            raise RuntimeError(f"{target.name} takes no messages (stalled?)")
        target.sock.send_multipart(frames, zmq.NOBLOCK)

    def _await_answer(self, target: Target) -> None:
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while target.answered < target.expected and time.monotonic() < deadline:
            self._drain(0.05)
        if target.answered < target.expected:
            self.report.missing += target.expected - target.answered
            target.answered = target.expected

    def _drain(self, wait: float = 0.0) -> None:
        poller = zmq.Poller()
        for s in [self.sink, *(t.sock for t in self.targets if t.router)]:
            poller.register(s, zmq.POLLIN)
        ready = dict(poller.poll(int(wait * 1000)))
        while ready:
            for t in self.targets:
                if t.router and t.sock in ready:
                    while t.sock.poll(0):
                        self._reply(t, t.sock.recv_multipart())
            while self.sink.poll(0):
                self._reply(None, self.sink.recv_multipart())
            ready = dict(poller.poll(0))

    def _reply(self, target: Target | None, frames: list[bytes]) -> None:
        try:
            msg = decode(frames)
        except WireError:
            self.report.unexpected.append(f"undecodable reply from {target.name if target else 'a service'}")
            return
        self.report.replies[type(msg).__name__] += 1
        if isinstance(msg, StageError) and msg.kind is ErrorKind.INTERNAL:
            self.report.unexpected.append(f"internal error from {msg.source}: {msg.message[:200]}")
        if target is None:
            return
        if isinstance(msg, StageError) and msg.message.startswith("malformed"):
            target.answered += 1
        elif isinstance(msg, KVGrant) and msg.request_id in self.reserved:
            self.templates.granted[msg.request_id] = [self.reserved.pop(msg.request_id), 0]
        elif target.name == "decode-kv" and isinstance(msg, StageError):
            self.report.unexpected.append(f"decode answered a well-formed message with {msg.message[:200]}")

    def _clean_up(self) -> None:
        """Abort every request the fuzzer named, then stay silent: the services drop the rest."""
        by_name = {t.name: t for t in self.targets}
        for rid in set(self.templates.used):
            self._send(by_name["prefill"], frames_of(AbortRequest(request_id=rid, reason="fuzz over")))
            self._send(by_name["decode-control"], frames_of(AbortRequest(request_id=rid, reason="fuzz over")))
            if rid in self.templates.granted:
                self._send(by_name["decode-kv"], frames_of(KVAbort(request_id=rid, reason="fuzz over")))
            self._drain()

    def _settle(self) -> None:
        """Wait until every KV block is free (the services drop what the fuzzer's silence orphans)."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while time.monotonic() < deadline:
            self._drain(0.2)
            if self.report.blocks(self.log_dir):
                return


def greedy(url: str) -> str:
    """A greedy completion through the router (raises when it fails)."""
    with urllib.request.urlopen(url + "/v1/models", timeout=30) as resp:
        model = json.loads(resp.read())["data"][0]["id"]
    body = {
        "model": model,
        "prompt": "The wire fuzzer says",
        "max_tokens": 8,
        "temperature": 0,
        "ignore_eos": True,
    }
    req = urllib.request.Request(
        url + "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())["choices"][0]["text"]


def fuzz(log_dir: Path, url: str, model: Path, messages: int, seed: int = 0) -> Report:
    fuzzer = Fuzzer(log_dir, url, model, seed)
    try:
        return fuzzer.run(messages)
    finally:
        fuzzer.close()


# ----- the command line ----------------------------------------------------------------------------
CLUSTER_FLAGS = (
    "--dtype", "float32", "--decode-arg=--no-compile-decode", "--decode-arg=--transfer-timeout-s=5",
    "--decode-arg=--report-interval-s=0.2", "--router-arg=--heartbeat-timeout-s=15",
)  # fmt: skip
TINY: dict[str, Any] = {"num_hidden_layers": 3, "mlp_only_layers": (2,), "max_pixels": 160_000}


def cluster(model: Path, log_dir: Path, *flags: str) -> Iterator[str]:
    from bench.servers import Server, serve

    cmd = (sys.executable, "-m", "router.cli", "up", "--model", str(model), "--base-port", "0", "--log-dir", str(log_dir), *flags)  # fmt: skip
    with serve(Server("epd", cmd, "cluster ready", 300), log_dir) as url:
        yield url.removesuffix("/v1")


def main(argv: list[str] | None = None) -> int:
    import contextlib
    import os
    import tempfile

    from shared.checkpoint.tiny import cached_tiny_checkpoint

    p = argparse.ArgumentParser(prog="python -m bench.fuzz_wire", description=__doc__.split("\n", 1)[0])
    p.add_argument("--messages", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", type=Path, default=None, help="checkpoint (default: a tiny random one)")
    p.add_argument("--log-dir", type=Path, default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("DECODE_COMPILE_DECODE", "0")
    model = args.model or cached_tiny_checkpoint(Path(tempfile.gettempdir()) / "epd-fuzz-checkpoints", **TINY)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="epd-fuzz-"))
    with contextlib.contextmanager(cluster)(model, log_dir, *CLUSTER_FLAGS) as url:
        report = fuzz(log_dir, url, model, args.messages, args.seed)
    print("\n".join(report.lines(args.seed)))
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
