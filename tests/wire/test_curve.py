"""CurveZMQ on the typed sockets (``shared.wire.security``): with keys, the mesh's sockets talk;
a rogue peer without the keys (no keys, a wrong server key, an unauthorised client key) gets no
message into a bound socket and reads nothing out of one; a legitimate client never delivers to a
server without the server secret key; plain mode warns when it binds beyond loopback."""

from __future__ import annotations

import contextlib
import logging
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import zmq

from shared.wire import (
    CacheMiss,
    DealerSocket,
    EncodeRequest,
    ImageEmbeddingResult,
    ImageInput,
    PullSocket,
    PushPool,
    PushSocket,
    RouterSocket,
    Stage,
    encode,
    security,
)
from shared.wire.messages import LoadReport

pytestmark = pytest.mark.unit

H = "d" * 64
QUIET_S = 1.0  # a handshake on loopback takes milliseconds: nothing within this is nothing at all


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[security.MeshKeys]:
    keys = security.write_keys(tmp_path / "keys")
    assert security.configure(tmp_path / "keys") == keys
    yield keys
    security.configure(None)


@pytest.fixture
def rogue_ctx() -> Iterator[zmq.Context]:
    """The rogue's own context (its own process, as far as ZMQ can tell)."""
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def embedding(request_id: str = "r") -> ImageEmbeddingResult:
    return ImageEmbeddingResult(
        request_id, 0, H, (1, 4, 4), torch.randn(4, 8).bfloat16(), torch.randn(3, 4, 8).bfloat16()
    )


def encode_request() -> EncodeRequest:
    return EncodeRequest("chatcmpl-7", [ImageInput(0, H)], "tcp://127.0.0.1:1", time.time() + 30)


def report() -> LoadReport:
    return LoadReport("rogue", Stage.ENCODER, "tcp://10.9.9.9:5600")


ROGUES = ("no keys", "wrong server key", "unauthorised client key")


def rogue_socket(ctx: zmq.Context, kind: int, rogue: str, keys: security.MeshKeys) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.linger = 0
    # A send waits for a pipe; a refused handshake tears the pipe down, and a send caught between
    # that and the reconnection waited forever (a suite hung once): bounded, see ``rogue_send``.
    sock.sndtimeo = int(QUIET_S * 1000)
    if rogue != "no keys":
        public, secret = zmq.curve_keypair()
        sock.curve_publickey, sock.curve_secretkey = public, secret
        sock.curve_serverkey = zmq.curve_keypair()[0] if rogue == "wrong server key" else keys.server_public
    return sock


def rogue_send(sock: zmq.Socket, frames: list) -> None:
    """Send, or find that not even the rogue's own queue takes it (nothing can arrive then either)."""
    with contextlib.suppress(zmq.Again):
        sock.send_multipart(frames)


def test_typed_sockets_talk_with_keys(mesh: security.MeshKeys) -> None:
    with PullSocket("tcp://127.0.0.1:0", bind=True) as inbox, PushSocket(inbox.endpoint, bind=False) as push:
        msg = embedding()
        push.send(msg)
        got = inbox.recv(timeout=5)
        assert isinstance(got, ImageEmbeddingResult) and torch.equal(
            got.embeds.view(torch.int16), msg.embeds.view(torch.int16)
        )
    with (
        RouterSocket("tcp://127.0.0.1:0", bind=True) as server,
        DealerSocket(server.endpoint, bind=False) as client,
    ):
        client.send(encode_request())
        got = server.recv(timeout=5)
        assert got is not None and isinstance(got[1], EncodeRequest)
        server.send(got[0], CacheMiss("chatcmpl-7", [0], [H]))
        assert isinstance(client.recv(timeout=5), CacheMiss)
    pool = PushPool()
    with PullSocket("tcp://127.0.0.1:0", bind=True) as inbox:
        pool.send(inbox.endpoint, report())
        assert isinstance(inbox.recv(timeout=5), LoadReport)
    pool.close()
    assert security.denied_clients() == 0


def test_a_large_first_message_is_received_with_zap(mesh: security.MeshKeys) -> None:
    """With ZAP, a new connection's first large message wakes the poll before it can be taken:
    the receive waits on instead of raising EAGAIN (which would stop a service's loop)."""
    big = ImageEmbeddingResult(
        "r", 0, H, (1, 64, 64), torch.zeros(1024, 2048).bfloat16(), torch.zeros(3, 1024, 2048).bfloat16()
    )  # 16 MiB: one image at the 30B-A3B shape
    for _ in range(3):  # a new connection each time
        with (
            PullSocket("tcp://127.0.0.1:0", bind=True) as inbox,
            PushSocket(inbox.endpoint, bind=False) as push,
        ):
            push.send(big)
            assert isinstance(inbox.recv(timeout=10), ImageEmbeddingResult)


@pytest.mark.parametrize("rogue", ROGUES)
def test_rogue_cannot_submit_to_a_router_nor_read_an_answer(mesh, rogue_ctx, rogue: str) -> None:
    with RouterSocket("tcp://127.0.0.1:0", bind=True) as server:
        dealer = rogue_socket(rogue_ctx, zmq.DEALER, rogue, mesh)
        dealer.connect(server.endpoint)
        rogue_send(dealer, encode(encode_request()))
        assert server.recv(timeout=QUIET_S) is None  # nothing accepted
        assert not dealer.poll(int(QUIET_S * 1000))  # nothing to read
    if rogue == "unauthorised client key":
        assert security.denied_clients() >= 1  # the server key was right: ZAP said no


@pytest.mark.parametrize("rogue", ROGUES)
def test_rogue_cannot_push_into_a_pull(mesh, rogue_ctx, rogue: str) -> None:
    with PullSocket("tcp://127.0.0.1:0", bind=True) as inbox:
        push = rogue_socket(rogue_ctx, zmq.PUSH, rogue, mesh)
        push.connect(inbox.endpoint)
        for msg in (embedding(), report()):
            rogue_send(push, encode(msg))
        assert inbox.recv(timeout=QUIET_S) is None


@pytest.mark.parametrize("rogue", ["plain server", "curve server with another secret key"])
def test_a_client_never_delivers_to_a_server_without_the_secret_key(mesh, rogue_ctx, rogue: str) -> None:
    """An impostor bound where a worker was (a reused address, a forged report) reads nothing."""
    pull = rogue_ctx.socket(zmq.PULL)
    pull.linger = 0
    if rogue != "plain server":
        pull.curve_server, pull.curve_secretkey = True, zmq.curve_keypair()[1]
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    ours = f"rogue-{uuid.uuid4().hex}".encode()
    with PushSocket(f"tcp://127.0.0.1:{port}", bind=False) as push:
        push.send(embedding(ours.decode()))  # queued: no handshake completes
        deadline = time.monotonic() + QUIET_S
        # A plain rogue may get a stray: an earlier test's plain socket that still redials the
        # port it reuses. Ours never arrives.
        while (left := deadline - time.monotonic()) > 0:
            if pull.poll(max(1, int(left * 1000))):
                assert ours not in b"".join(pull.recv_multipart())


def test_the_same_rogue_gets_through_in_plain_mode(rogue_ctx) -> None:
    """The check above is not vacuous: without keys, the plain rogue is served."""
    with RouterSocket("tcp://127.0.0.1:0", bind=True) as server:
        dealer = rogue_socket(rogue_ctx, zmq.DEALER, "no keys", None)  # type: ignore[arg-type]
        dealer.connect(server.endpoint)
        dealer.send_multipart(encode(encode_request()))  # must go through: no refusal swallowed
        got = server.recv(timeout=5)
        assert got is not None
        server.send(got[0], CacheMiss("chatcmpl-7", [0], [H]))
        assert dealer.poll(5000)


def test_another_authorised_client_key_is_accepted(tmp_path: Path, rogue_ctx) -> None:
    keys = security.write_keys(tmp_path / "keys")
    extra = tmp_path / "keys" / security.AUTHORIZED
    extra.mkdir()
    _, secret = zmq.auth.create_certificates(str(tmp_path), "tool")
    (extra / "client.key").write_bytes((tmp_path / "keys" / "client.key").read_bytes())
    (extra / "tool.key").write_bytes((tmp_path / "tool.key").read_bytes())
    security.configure(tmp_path / "keys")
    try:
        tool_public, tool_secret = zmq.auth.load_certificate(secret)
        with PullSocket("tcp://127.0.0.1:0", bind=True) as inbox:
            push = rogue_ctx.socket(zmq.PUSH)
            push.curve_publickey, push.curve_secretkey = tool_public, tool_secret
            push.curve_serverkey = keys.server_public
            push.sndtimeo = 5000
            push.connect(inbox.endpoint)
            push.send_multipart(encode(report()))
            assert isinstance(inbox.recv(timeout=5), LoadReport)
            push.close(linger=0)
    finally:
        security.configure(None)


def test_key_set_files_and_errors(tmp_path: Path) -> None:
    keys = security.write_keys(tmp_path / "k")
    for name in ("server.key_secret", "client.key_secret"):
        assert stat.S_IMODE((tmp_path / "k" / name).stat().st_mode) == 0o600
    assert security.MeshKeys.load(tmp_path / "k") == keys
    assert keys.authorized == {keys.client_public} and keys.server_public != keys.client_public
    with pytest.raises(security.MeshKeysError, match="not overwriting"):
        security.write_keys(tmp_path / "k")
    with pytest.raises(security.MeshKeysError, match="epd keys"):
        security.configure(tmp_path / "missing")
    assert security.configured() is None


def test_plain_bind_beyond_loopback_warns(caplog) -> None:
    security.configure(None)
    with caplog.at_level(logging.WARNING, logger="security"):
        PullSocket("tcp://127.0.0.1:0", bind=True).close()
        assert not caplog.records
        PullSocket("tcp://0.0.0.0:0", bind=True).close()
    assert "WITHOUT CurveZMQ" in caplog.text and caplog.records[0].levelno == logging.WARNING


def test_keyed_bind_beyond_loopback_is_quiet(mesh, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="security"):
        PullSocket("tcp://0.0.0.0:0", bind=True).close()
    assert not caplog.records


def test_flags_and_the_mooncake_policy(tmp_path: Path, monkeypatch) -> None:
    from services.decode.config import parse_config as decode_config
    from services.encoder.config import parse_config as encoder_config
    from services.prefill.config import parse_config as prefill_config

    monkeypatch.setenv("ENCODER_CURVE_KEYS", str(tmp_path))
    assert encoder_config([]).curve_keys == tmp_path
    monkeypatch.setenv("ENCODER_CURVE_KEYS", "")  # compose's ${EPD_CURVE_KEYS:+...} when unset
    assert encoder_config([]).curve_keys is None
    keyed = ["--curve-keys", str(tmp_path), "--kv-transfer", "mooncake"]
    for parse in (prefill_config, decode_config):
        with pytest.raises(SystemExit):
            parse([*keyed, "--host", "0.0.0.0"])
        with pytest.raises(SystemExit):
            parse([*keyed, "--kv-transfer-host", "10.0.0.5"])
        assert (
            parse([*keyed, "--host", "0.0.0.0", "--allow-insecure-kv-transfer"]).transfer.kv_transfer
            == "mooncake"
        )
        assert parse(keyed).curve_keys == tmp_path  # loopback: allowed
        assert parse(["--kv-transfer", "mooncake", "--host", "0.0.0.0"]).curve_keys is None  # plain: warns
