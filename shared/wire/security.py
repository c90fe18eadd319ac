"""CurveZMQ on every inter-service socket: the process's mesh security, configured once at start.

``configure(keys_dir)`` (``--curve-keys DIR`` on every service and the router) loads a
``MeshKeys`` set and from then on ``secure(sock, server=..., address=...)``, which ``WireSocket``
calls before every bind and connect, makes

* every bound socket a Curve *server* (the cluster's server secret key), whose connections ZAP
  accepts only from an authorised client public key (a ``ThreadAuthenticator`` on the socket's
  context: the key is the check, not the peer's address);
* every connecting socket a Curve *client* (the cluster's client keypair and the server's public
  key), so that it talks only to a peer holding the server secret key.

A peer without the keys completes no handshake: it can neither submit nor read, and what crosses
the network is encrypted. ``configure(None)`` is plain mode, meant for loopback development: a
socket bound beyond loopback then logs a WARNING.

Key set (``write_keys``, ``epd keys DIR``), in pyzmq's certificate format (``zmq.auth``)::

    server.key  server.key_secret (0600)   the keypair every bound socket serves with
    client.key  client.key_secret (0600)   the keypair every connecting socket presents
    authorized/*.key                      optional: the client public keys servers accept
                                           (absent: client.key alone)

One server keypair and one client keypair serve the whole cluster: every process both binds and
connects, and a worker connects to peers it learns at run time (the inbox a request names, the
decode worker a grant names), so per-service server keys would have to travel in the messages and
be trusted from them. ``authorized/`` lets an operator add a client (a benchmark tool) or roll the
client key (authorise new and old, switch the keypair, drop the old) without a window.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from prometheus_client import CollectorRegistry, Gauge
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("security")
SERVER, CLIENT, AUTHORIZED = "server", "client", "authorized"
DENIAL_LOG_EVERY_S = 60.0  # a refused client reconnects every 100 ms: one line per key a minute


class MeshKeysError(ValueError):
    """The key directory is missing, incomplete or malformed."""


@dataclass(frozen=True)
class MeshKeys:
    server_public: bytes  # Z85, 40 bytes each
    server_secret: bytes
    client_public: bytes
    client_secret: bytes
    authorized: frozenset[bytes]  # client public keys the servers accept

    @classmethod
    def load(cls, directory: Path) -> MeshKeys:
        directory = Path(directory)
        server_public, server_secret = _keypair(directory, SERVER)
        client_public, client_secret = _keypair(directory, CLIENT)
        extra = directory / AUTHORIZED
        if extra.is_dir():
            authorized = frozenset(zmq.auth.load_certificates(str(extra)))
            if not authorized:
                raise MeshKeysError(f"{extra} holds no client public key (*.key)")
            if client_public not in authorized:
                log.warning("this process's own client key is not in %s: its peers will refuse it", extra)
        else:
            authorized = frozenset({client_public})
        return cls(server_public, server_secret, client_public, client_secret, authorized)


def _keypair(directory: Path, name: str) -> tuple[bytes, bytes]:
    path = directory / f"{name}.key_secret"
    if not path.is_file():
        raise MeshKeysError(f"no {path} (make a key set with `epd keys {directory}`)")
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as e:
        raise MeshKeysError(f"{path}: {e}") from None
    if secret is None or len(public) != 40 or len(secret) != 40:
        raise MeshKeysError(f"{path} is not a CurveZMQ secret certificate (Z85 public and secret key)")
    if path.stat().st_mode & stat.S_IRWXO:  # group-readable is how containers get it (fsGroup)
        log.warning("%s can be read by every user of this machine (chmod 600 or 640 it)", path)
    return public, secret


def write_keys(directory: Path) -> MeshKeys:
    """A new key set in ``directory`` (created 0700 if missing; existing keys are not overwritten).
    Secret files are 0600 from their creation."""
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if existing := sorted(p.name for p in directory.glob("*.key*")):
        raise MeshKeysError(f"{directory} already holds keys ({', '.join(existing)}): not overwriting")
    old = os.umask(0o077)  # the certificates are born private; the public halves opened up below
    try:
        for name in (SERVER, CLIENT):
            public, _ = zmq.auth.create_certificates(str(directory), name)
            os.chmod(public, 0o644)
    finally:
        os.umask(old)
    return MeshKeys.load(directory)


class _Allowlist:
    """ZAP's Curve check: the client's public key must be authorised. Counts and logs refusals."""

    def __init__(self, keys: frozenset[bytes]) -> None:
        self.keys = keys
        self.denied = 0
        self._logged: dict[bytes, float] = {}

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.keys:
            return True
        self.denied += 1
        now = time.monotonic()
        if now - self._logged.get(key, -DENIAL_LOG_EVERY_S) >= DENIAL_LOG_EVERY_S:
            self._logged[key] = now
            log.warning("refused a CurveZMQ client with an unauthorised key %s", key.decode()[:8] + "...")
        return False


class _Mesh:
    def __init__(self) -> None:
        self.keys: MeshKeys | None = None
        self.allowlist: _Allowlist | None = None
        self.authenticators: list[tuple[zmq.Context, ThreadAuthenticator]] = []
        self.lock = threading.Lock()


_mesh = _Mesh()


def configure(keys_dir: Path | None) -> MeshKeys | None:
    """This process's mesh security: Curve with the keys in ``keys_dir``, or plain (None). Call it
    before any socket is made; calling it again replaces the configuration (tests)."""
    shutdown()
    if keys_dir is None:
        _mesh.keys = _mesh.allowlist = None
        return None
    keys = MeshKeys.load(Path(keys_dir))
    _mesh.keys, _mesh.allowlist = keys, _Allowlist(keys.authorized)
    log.info(
        "CurveZMQ on every socket: keys from %s, %d authorised client key(s)", keys_dir, len(keys.authorized)
    )
    return keys


def configured() -> MeshKeys | None:
    return _mesh.keys


def denied_clients() -> int:
    """Connections ZAP refused for an unauthorised client key since ``configure``."""
    return _mesh.allowlist.denied if _mesh.allowlist else 0


def export_refusals(prefix: str, registry: CollectorRegistry) -> None:
    """``<prefix>_curve_refused_connections``: ``denied_clients()`` on a service's /metrics."""
    Gauge(
        f"{prefix}_curve_refused_connections",
        "Connections refused since start for an unauthorised CurveZMQ client key",
        registry=registry,
    ).set_function(lambda: float(denied_clients()))


def shutdown() -> None:
    """Stop the ZAP handlers (before ``Context.term()``, which waits for their sockets)."""
    with _mesh.lock:
        for _, auth in _mesh.authenticators:
            auth.stop()
        _mesh.authenticators.clear()


def _authenticate(context: zmq.Context) -> None:
    """A ZAP handler with the allowlist on ``context``, once (ZAP is per context)."""
    with _mesh.lock:
        if any(ctx is context for ctx, _ in _mesh.authenticators):
            return
        deadline = time.monotonic() + 2.0
        while True:
            auth = ThreadAuthenticator(context, log=logging.getLogger("security.zap"))
            auth.configure_curve_callback("*", credentials_provider=_mesh.allowlist)  # before any request
            try:
                auth.start()
                break
            except zmq.ZMQError as e:  # a stopped handler's inproc endpoint is released asynchronously
                if e.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        _mesh.authenticators.append((context, auth))


def secure(sock: zmq.Socket, *, server: bool, address: str) -> None:
    """Apply the mesh's security to a socket before it binds (``server``) or connects to
    ``address``. Plain mode: nothing, but a bind beyond loopback is logged as a WARNING."""
    if address.startswith("inproc://"):
        return  # never leaves the process
    keys = _mesh.keys
    if keys is None:
        if server and not is_loopback(host_of(address)):
            log.warning(
                "%s is bound WITHOUT CurveZMQ: any peer that reaches it can submit and read messages "
                "(give --curve-keys DIR; `epd keys DIR` makes a key set)",
                address,
            )
        return
    if server:
        _authenticate(sock.context)
        sock.curve_secretkey = keys.server_secret
        sock.curve_publickey = keys.server_public
        sock.curve_server = True
    else:
        sock.curve_secretkey = keys.client_secret
        sock.curve_publickey = keys.client_public
        sock.curve_serverkey = keys.server_public


def host_of(address: str) -> str:
    """``tcp://HOST:PORT`` -> HOST (IPv6 brackets removed); '' for transports without a host."""
    if not address.startswith("tcp://"):
        return ""
    return address.removeprefix("tcp://").rsplit(":", 1)[0].strip("[]")


def is_loopback(host: str) -> bool:
    """Reachable from this machine only: 127.0.0.0/8, ::1, localhost (and ipc paths, host '')."""
    if host in ("", "localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a wildcard (*, 0.0.0.0 is an address) or a name other machines resolve too
