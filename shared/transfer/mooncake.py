"""The KV transfer over Mooncake's Transfer Engine: one-sided writes into the decode pool.

Each worker runs one ``TransferEngine`` (P2P handshake, no metadata server) and registers its KV
pool once at start: ``pool.k`` and ``pool.v``, each one contiguous ``[layers, N, B, Hkv, D]``
tensor, so a block of a layer is one contiguous run of bytes at a fixed stride. The receiver's
grant names its region (engine address, base addresses, strides) and the blocks it reserved; the
sender turns a token range into runs of consecutive blocks, one write per run, layer and K/V,
straight from its pool into the decode pool: nothing on the decode side copies.

Control stays on ZMQ (the classes extend ``ZmqKVSender`` / ``ZmqKVReceiver``). Writes are
asynchronous: one writer thread per destination submits a send's writes in batches of at most
``MAX_WRITES``, blocks on each (the engine releases the GIL) and wakes the service loop through an
inproc socket when the send has landed. Only then does the sender
send what must follow the data: ``KVProgress``, ``KVDone``, ``KVAbort``. A failed write is a
FAILED reply. ``settle`` waits for a transfer's writes before its source blocks are freed.

TCP works anywhere (here: loopback); RDMA needs NICs, ``--kv-transfer-protocol rdma`` and, for
GPU pools, Mooncake's CUDA build (this project installs the non-CUDA one, which registers host
memory only).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field

import zmq

from shared.engine.kv_pool import KVPool
from shared.extras import MissingExtra, require
from shared.transfer.base import ReplyEvent, TransferReply
from shared.transfer.zmq_transfer import ZmqKVReceiver, ZmqKVSender
from shared.wire import WireError
from shared.wire.messages import ErrorKind, KVAbort, KVDone, KVGrant, KVProgress, KVRegion

log = logging.getLogger("kv_transfer")
# Mooncake's TCP transport fails a peer's writes past ~2k queued ones, and the pair stays broken;
# a send goes out as batches of at most this many writes, each submitted once the previous landed.
MAX_WRITES = 512
SETTLE_S = 5.0  # longest an abort waits for writes still reading the source blocks
LIBRARIES = "libibverbs1 librdmacm1 libnuma1 libcurl4"


def transfer_engine() -> type:
    """Mooncake's ``TransferEngine`` class. Raises ``MissingExtra`` when the wheel is not installed,
    and an ImportError naming ``make deps`` when it cannot load the libraries it links."""
    os.environ.setdefault("MC_LOG_LEVEL", "WARNING")  # its INFO lines name every connection
    try:
        module = require("mooncake.engine", extra="mooncake", feature="--kv-transfer mooncake")
    except MissingExtra:
        raise
    except ImportError as e:
        raise ImportError(
            f"--kv-transfer mooncake: Mooncake's Transfer Engine is installed but cannot load ({e}); "
            f"install its libraries with `make deps` (as root), or apt-get install {LIBRARIES}"
        ) from e
    engine_class: type = module.TransferEngine
    return engine_class


class MooncakeEndpoint:
    """This process's transfer engine with the KV pool registered; ``region`` is how peers write it."""

    def __init__(self, pool: KVPool, host: str, protocol: str = "tcp", nics: str = "") -> None:
        if pool.device.type != "cpu":
            raise ValueError(
                f"the installed Mooncake build registers host memory only; the KV pool is on {pool.device} "
                "(GPU pools need Mooncake's CUDA build, mooncake-transfer-engine)"
            )
        self.engine = transfer_engine()()
        if self.engine.initialize(host, "P2PHANDSHAKE", protocol, nics) != 0:
            raise RuntimeError(
                f"Mooncake transfer engine: initialize({host!r}, {protocol!r}, {nics!r}) failed"
            )
        self.session = f"{host}:{self.engine.get_rpc_port()}"
        for t in (pool.k, pool.v):
            if self.engine.register_memory(t.data_ptr(), t.nbytes) != 0:
                raise RuntimeError(f"Mooncake transfer engine: cannot register {t.nbytes} bytes of KV pool")
        self.pool = pool
        self.block_bytes = pool.k[0, 0].nbytes
        self.region = KVRegion(
            self.session, pool.k.data_ptr(), pool.v.data_ptr(), pool.k[0].nbytes, self.block_bytes,
            pool.block_size, pool.num_blocks,
        )  # fmt: skip

    def close(self) -> None:
        for t in (self.pool.k, self.pool.v):
            self.engine.unregister_memory(t.data_ptr())


def block_runs(src: list[int], dst: list[int]) -> list[tuple[int, int, int]]:
    """(first source block, first destination block, count) of runs consecutive on both sides."""
    runs: list[tuple[int, int, int]] = []
    for s, d in zip(src, dst, strict=True):
        if runs and s == runs[-1][0] + runs[-1][2] and d == runs[-1][1] + runs[-1][2]:
            runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((s, d, 1))
    return runs


@dataclass
class _Send:
    rid: str
    session: str
    writes: list[tuple[list[int], list[int], list[int]]]  # batches of (sources, destinations, lengths)
    tokens: int  # the KV of this many prompt tokens is in the destination once they land


@dataclass
class _InFlight:
    dest: str
    batches: int = 0
    landed: int = 0  # tokens whose KV is known to be in the destination
    failed: bool = False  # a write failed (or the peer is gone): nothing more is sent
    after: list[KVDone] = field(default_factory=list)  # control messages waiting for the writes


class MooncakeKVSender(ZmqKVSender):
    def __init__(
        self, pool: KVPool, host: str, protocol: str = "tcp", nics: str = "", max_destinations: int = 64
    ) -> None:
        super().__init__(pool, max_destinations)
        self.endpoint = MooncakeEndpoint(pool, host, protocol, nics)
        self._flights: dict[str, _InFlight] = {}
        self._writers: dict[str, queue.SimpleQueue[_Send | None]] = {}
        self._inbox_address = f"inproc://mooncake-{id(self)}"
        self._inbox: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PULL)
        self._inbox.bind(self._inbox_address)
        self._early: list[TransferReply] = []  # replies met while settling, for the next poll
        self.bytes_written = 0

    # ----- data -------------------------------------------------------------------------------------
    def send(
        self, dest: str, grant: KVGrant, block_table: list[int], start: int, end: int, timeout: float
    ) -> int:
        rid, region = grant.request_id, grant.region
        if region is None:
            raise WireError(
                f"decode worker {dest} takes no one-sided writes (started with --kv-transfer zmq?)"
            )
        if (region.block_bytes, region.block_size) != (self.endpoint.block_bytes, self.pool.block_size):
            raise WireError(
                f"decode worker {dest} has KV blocks of {region.block_size} tokens, {region.block_bytes} bytes; "
                f"here {self.pool.block_size}, {self.endpoint.block_bytes}: mooncake needs the same "
                "--block-size and KV dtype on both sides"
            )
        b = self.pool.block_size
        first, last = start // b, -(-end // b)
        if last > len(grant.blocks) or any(not 0 <= x < region.num_blocks for x in grant.blocks[first:last]):
            raise WireError(f"the grant of {rid} names {len(grant.blocks)} blocks, not the {last} needed")
        runs = block_runs(block_table[first:last], grant.blocks[first:last])
        src_stride, dst_stride, bb = self.pool.k[0].nbytes, region.layer_stride, self.endpoint.block_bytes
        srcs, dsts, lens = [], [], []
        for src_base, dst_base in (
            (self.pool.k.data_ptr(), region.k_base),
            (self.pool.v.data_ptr(), region.v_base),
        ):
            for layer in range(self.pool.num_layers):
                s0, d0 = src_base + layer * src_stride, dst_base + layer * dst_stride
                for s, d, n in runs:
                    srcs.append(s0 + s * bb)
                    dsts.append(d0 + d * bb)
                    lens.append(n * bb)
        flight = self._flights.setdefault(rid, _InFlight(dest))
        flight.batches += 1
        writes = [
            (srcs[i : i + MAX_WRITES], dsts[i : i + MAX_WRITES], lens[i : i + MAX_WRITES])
            for i in range(0, len(srcs), MAX_WRITES)
        ]
        self._writer(dest).put(_Send(rid, region.session, writes, end))
        nbytes = sum(lens)
        self.bytes_written += nbytes
        return nbytes

    def _writer(self, dest: str) -> queue.SimpleQueue[_Send | None]:
        q = self._writers.get(dest)
        if q is None:
            q = self._writers[dest] = queue.SimpleQueue()
            threading.Thread(
                target=self._write, args=(q,), name=f"mooncake-write-{dest}", daemon=True
            ).start()
        return q

    def _write(self, q: queue.SimpleQueue[_Send | None]) -> None:
        """One destination's sends, in order: submit each batch of writes, block until it lands
        (the engine releases the GIL), then tell the loop (rid, status, tokens)."""
        engine = self.endpoint.engine
        push: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUSH)
        push.connect(self._inbox_address)
        try:
            while (item := q.get()) is not None:
                status = 0
                for srcs, dsts, lens in item.writes:
                    batch = engine.batch_transfer_async_write(item.session, srcs, dsts, lens)
                    status = engine.get_batch_transfer_status([batch]) if batch > 0 else -1
                    if status != 0:
                        break
                push.send_multipart([item.rid.encode(), str(status).encode(), str(item.tokens).encode()])
        finally:
            push.close(linger=0)

    def _landed(self, block: bool, timeout: float = 0.0) -> list[TransferReply]:
        """Handle finished batches: progress, the messages they held back, failures."""
        out: list[TransferReply] = []
        flags = 0 if block else zmq.NOBLOCK
        if block and not self._inbox.poll(int(timeout * 1000)):
            return out
        while True:
            try:
                rid_b, status_b, tokens_b = self._inbox.recv_multipart(flags)
            except zmq.Again:
                return out
            flags = zmq.NOBLOCK
            rid, status, tokens = rid_b.decode(), int(status_b), int(tokens_b)
            flight = self._flights.get(rid)
            if flight is None:
                continue
            flight.batches -= 1
            if status != 0 and not flight.failed:
                message = f"mooncake writes to decode worker {flight.dest} failed (status {status})"
                out.append(TransferReply(rid, ReplyEvent.FAILED, ErrorKind.UNAVAILABLE, message))
                flight.failed = True
            elif not flight.failed:
                flight.landed = max(flight.landed, tokens)
                self._control(flight.dest, KVProgress(rid, flight.landed))
            if flight.batches == 0:
                for msg in [] if flight.failed else flight.after:
                    self._control(flight.dest, msg)
                del self._flights[rid]

    def _control(self, dest: str, msg: KVProgress | KVDone | KVAbort) -> None:
        try:
            self._dealer(dest).send(msg, 1.0)
        except WireError as e:
            log.info("[%s] %s not delivered to %s: %s", msg.request_id, type(msg).__name__, dest, e)

    # ----- control ----------------------------------------------------------------------------------
    def finish(self, dest: str, msg: KVDone, timeout: float) -> None:
        flight = self._flights.get(msg.request_id)
        if flight is None:
            super().finish(dest, msg, timeout)
        else:
            flight.after.append(msg)

    def settle(self, request_id: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while request_id in self._flights:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._early += self._landed(block=True, timeout=left)
        return True

    def abort(self, dest: str, request_id: str, reason: str) -> None:
        if not self.settle(request_id, SETTLE_S):
            log.warning(
                "[%s] writes to %s still in flight after %.0fs; aborting anyway", request_id, dest, SETTLE_S
            )
            self._flights.pop(request_id, None)
        super().abort(dest, request_id, reason)

    def poll(self, timeout: float) -> list[TransferReply]:
        landed, self._early = self._early + self._landed(block=False), []
        replies = super().poll(0 if landed else timeout)
        return landed + replies + self._landed(block=False)

    def forget(self, dest: str) -> None:
        super().forget(dest)
        if (q := self._writers.pop(dest, None)) is not None:
            q.put(None)  # its thread ends after the sends it holds
        for rid in [r for r, f in self._flights.items() if f.dest == dest]:
            self._flights[rid].failed = True  # nothing more goes to a dead peer

    @property
    def sockets(self) -> list[zmq.Socket]:
        return [*super().sockets, self._inbox]

    def close(self) -> None:
        for q in self._writers.values():
            q.put(None)
        super().close()
        self._inbox.close(linger=0)
        self.endpoint.close()


class MooncakeKVReceiver(ZmqKVReceiver):
    """A ZMQ control receiver whose grants name the registered pool: the data never passes here."""

    one_sided = True

    def __init__(
        self,
        address: str,
        pool: KVPool,
        host: str,
        protocol: str = "tcp",
        nics: str = "",
        name: str = "decode",
    ) -> None:
        self.endpoint = MooncakeEndpoint(pool, host, protocol, nics)
        try:
            super().__init__(address, name)
        except BaseException:
            self.endpoint.close()
            raise

    def grant(self, request_id: str, blocks: list[int]) -> None:
        self._answer(request_id, KVGrant(request_id, blocks, self.endpoint.region))

    def close(self) -> None:
        super().close()
        self.endpoint.close()
