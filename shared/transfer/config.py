"""The KV transfer flags shared by prefill and decode workers, and the transfer they build.

``--kv-transfer zmq`` (the default) sends each layer's KV as ZMQ frames over TCP and needs nothing
else. ``--kv-transfer mooncake`` writes it one-sided into the decode pool with Mooncake's
Transfer Engine (``pip install 'epd-serve[mooncake]'`` plus ``make deps``): over TCP on one
machine or a plain network, over RDMA (``--kv-transfer-protocol rdma --kv-transfer-nics mlx5_0``)
on GPU clusters. Control messages stay on ZMQ either way.

Mooncake's transfer engine authenticates nobody: a peer that reaches its port can write into (and
read) the registered KV pool, and CurveZMQ (``--curve-keys``) does not cover it. So a worker that
is given keys and is reachable beyond loopback (``--host`` or ``--kv-transfer-host``) refuses
``--kv-transfer mooncake`` unless ``--allow-insecure-kv-transfer`` says the network carrying it is
trusted (an isolated RDMA fabric, a NetworkPolicy); reachable without keys, it logs a WARNING.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from shared.engine.kv_pool import KVPool
from shared.flags import flag
from shared.transfer.base import KVReceiver, KVSender
from shared.transfer.mooncake import MooncakeKVReceiver, MooncakeKVSender
from shared.transfer.zmq_transfer import ZmqKVReceiver, ZmqKVSender
from shared.wire.security import is_loopback

log = logging.getLogger("kv_transfer")

TRANSFERS = ("zmq", "mooncake")
PROTOCOLS = ("tcp", "rdma")


@dataclass(frozen=True, kw_only=True)
class TransferConfig:
    kv_transfer: str = flag("zmq", help=f"how KV moves from prefill to decode: {' | '.join(TRANSFERS)}")
    kv_transfer_protocol: str = flag("tcp", help=f"mooncake's transport: {' | '.join(PROTOCOLS)}")
    kv_transfer_nics: str = flag(
        "", help="mooncake: comma-separated RDMA devices to use (e.g. mlx5_0,mlx5_1); empty: all found"
    )
    kv_transfer_host: str = flag(
        "",
        help="mooncake: the address peers reach this worker's transfer engine at (default: the "
        "advertised host, else --host, else 127.0.0.1)",
    )
    allow_insecure_kv_transfer: bool = flag(
        False,
        help="accept --kv-transfer mooncake beyond loopback with --curve-keys: its transfer engine "
        "authenticates no peer (the network carrying it must be trusted)",
    )

    def __post_init__(self) -> None:
        if self.kv_transfer not in TRANSFERS:
            raise ValueError(f"kv_transfer: {self.kv_transfer!r}, expected one of {TRANSFERS}")
        if self.kv_transfer_protocol not in PROTOCOLS:
            raise ValueError(
                f"kv_transfer_protocol: {self.kv_transfer_protocol!r}, expected one of {PROTOCOLS}"
            )

    def exposure(self, host: str) -> str:
        """Why this worker's KV data path is open to unauthenticated peers ('' when it is not)."""
        hosts = [h for h in (host, self.kv_transfer_host) if h and not is_loopback(h)]
        if self.kv_transfer != "mooncake" or not hosts:
            return ""
        return (
            f"--kv-transfer mooncake on {', '.join(hosts)}: its transfer engine takes one-sided writes "
            "and reads of the KV pool from any peer that reaches it, with no authentication "
            "(CurveZMQ covers only the ZMQ sockets)"
        )

    def check_security(self, host: str, secured: bool) -> None:
        """Raise ``ValueError`` for mooncake beyond loopback in a keyed mesh, unless allowed."""
        if secured and not self.allow_insecure_kv_transfer and (why := self.exposure(host)):
            raise ValueError(f"{why}; with --curve-keys it needs --allow-insecure-kv-transfer")

    def engine_host(self, host: str) -> str:
        """The transfer engine's host name: the flag, else ``host`` unless it is a wildcard."""
        if self.kv_transfer_host:
            return self.kv_transfer_host
        return host if host and host not in ("0.0.0.0", "::", "*") else "127.0.0.1"


def build_sender(cfg: TransferConfig, pool: KVPool, host: str) -> KVSender:
    if why := cfg.exposure(host):
        log.warning("%s", why)
    if cfg.kv_transfer == "mooncake":
        host = cfg.engine_host(host)
        return MooncakeKVSender(pool, host, cfg.kv_transfer_protocol, cfg.kv_transfer_nics)
    return ZmqKVSender(pool)


def build_receiver(cfg: TransferConfig, address: str, pool: KVPool, host: str, name: str) -> KVReceiver:
    """``host``: the name prefill workers reach this decode worker by."""
    if why := cfg.exposure(host):
        log.warning("%s", why)
    if cfg.kv_transfer == "mooncake":
        host = cfg.engine_host(host)
        return MooncakeKVReceiver(address, pool, host, cfg.kv_transfer_protocol, cfg.kv_transfer_nics, name)
    return ZmqKVReceiver(address, name)
