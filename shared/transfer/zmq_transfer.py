"""The KV transfer over ZMQ TCP: works across machines, needs nothing but the network.

The sender keeps one DEALER per decode worker it talks to; the receiver binds one ROUTER. Each
``send`` copies the token range out of the pool (one gather per layer) and queues one
``KVLayer`` per layer; the frames go out without further copies while the service loop computes
the next chunk (ZMQ's I/O thread streams them). The receiver copies each layer into the reserved
blocks. Replies travel back over the same connection, so the receiver answers whoever reserved,
with no address in the messages. ``shared.transfer.mooncake`` reuses both classes for its control
messages.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from typing import Any

import zmq

from shared.engine.kv_pool import KVPool
from shared.transfer.base import KVInbound, KVReceiver, KVSender, ReplyEvent, TransferReply
from shared.wire import DealerSocket, RouterSocket, Stage, StageError, WireError
from shared.wire.messages import (
    REQUEST_ID,
    ErrorKind,
    KVAbort,
    KVAck,
    KVDone,
    KVGrant,
    KVLayer,
    KVProgress,
    KVQueued,
    KVRefuse,
    KVReserve,
)

log = logging.getLogger("kv_transfer")
MAX_FRAME_BYTES = 4 << 30  # one layer of a long prompt of a large model
HWM = 100_000  # layer frames of many queued transfers; bounded by the service's own limits
_REPLIES = (KVGrant, KVQueued, KVRefuse, KVAck, StageError)


def _wait(socks: list[zmq.Socket], timeout: float) -> list[zmq.Socket]:
    if not socks:
        return []
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    return [s for s, _ in poller.poll(max(0, int(timeout * 1000)))]


class ZmqKVSender(KVSender):
    def __init__(self, pool: KVPool, max_destinations: int = 64) -> None:
        super().__init__(pool)
        self.max_destinations = max_destinations
        self._dealers: OrderedDict[str, DealerSocket] = OrderedDict()

    def _dealer(self, dest: str) -> DealerSocket:
        sock = self._dealers.get(dest)
        if sock is None:
            if len(self._dealers) >= self.max_destinations:
                _, oldest = self._dealers.popitem(last=False)
                oldest.close()
            sock = DealerSocket(dest, bind=False, accept=_REPLIES, hwm=HWM, max_frame_bytes=1 << 20)
            self._dealers[dest] = sock
        self._dealers.move_to_end(dest)
        return sock

    def reserve(self, dest: str, msg: KVReserve, timeout: float) -> None:
        self._dealer(dest).send(msg, timeout)

    def send(
        self, dest: str, grant: KVGrant, block_table: list[int], start: int, end: int, timeout: float
    ) -> int:
        dealer, nbytes = self._dealer(dest), 0
        for layer in range(self.pool.num_layers):
            k, v = self.pool.read_layer(block_table, end, layer, start)  # [end - start, Hkv, D], copies
            dealer.send(KVLayer(grant.request_id, layer, k, v, start), timeout)
            nbytes += k.nbytes + v.nbytes
        return nbytes

    def finish(self, dest: str, msg: KVDone, timeout: float) -> None:
        self._dealer(dest).send(msg, timeout)

    def abort(self, dest: str, request_id: str, reason: str) -> None:
        try:
            self._dealer(dest).send(KVAbort(request_id, reason[:1024]), 0.1)
        except WireError as e:
            log.info("[%s] abort not delivered to %s: %s", request_id, dest, e)

    def poll(self, timeout: float) -> list[TransferReply]:
        by_sock = {d.zmq_socket: d for d in self._dealers.values()}
        out: list[TransferReply] = []
        for zs in _wait(list(by_sock), timeout):
            dealer = by_sock[zs]
            while True:
                try:
                    msg = dealer.recv(0)
                except WireError as e:
                    log.warning("malformed transfer reply from %s: %s", dealer.address, e)
                    continue
                if msg is None:
                    break
                out.append(_reply(msg))
        return [r for r in out if r.request_id]

    def forget(self, dest: str) -> None:
        sock = self._dealers.pop(dest, None)
        if sock is not None:
            sock.zmq_socket.close(linger=0)  # drop the frames still queued for a dead peer

    @property
    def sockets(self) -> list[zmq.Socket]:
        return [d.zmq_socket for d in self._dealers.values()]

    def close(self) -> None:
        for d in self._dealers.values():
            d.close()
        self._dealers.clear()


def _reply(msg: KVGrant | KVQueued | KVRefuse | KVAck | StageError) -> TransferReply:
    match msg:
        case StageError():  # the receiver could not parse what we sent
            return TransferReply(msg.request_id or "", ReplyEvent.REFUSED, msg.kind, msg.message)
        case KVRefuse():
            return TransferReply(msg.request_id, ReplyEvent.REFUSED, msg.kind, msg.message)
        case KVGrant():
            return TransferReply(msg.request_id, ReplyEvent.GRANTED, grant=msg)
        case KVQueued():
            return TransferReply(msg.request_id, ReplyEvent.QUEUED)
        case KVAck():
            return TransferReply(msg.request_id, ReplyEvent.ACKED)


class ZmqKVReceiver(KVReceiver):
    def __init__(self, address: str, name: str = "decode") -> None:
        self.name = name
        self._sock = RouterSocket(
            address, bind=True, accept=(KVReserve, KVLayer, KVProgress, KVDone, KVAbort), hwm=HWM,
            max_frame_bytes=MAX_FRAME_BYTES,
        )  # fmt: skip
        self.address = self._sock.endpoint
        self._peers: dict[str, bytes] = {}  # request id -> the sender that reserved it
        self._rejected = 0

    def poll(self, timeout: float) -> list[KVInbound]:
        out: list[KVInbound] = []
        while True:
            try:
                got = self._sock.recv(timeout)
            except WireError as e:
                self._reject(e)
                timeout = 0.0
                continue
            if got is None:
                return out
            timeout = 0.0
            peer, msg = got
            if isinstance(msg, KVReserve):
                self._peers[msg.request_id] = peer
            elif self._peers.get(msg.request_id) != peer:
                # Layers or a done for a transfer this sender never reserved (or one already ended).
                if not isinstance(msg, KVAbort):
                    self._send(peer, KVRefuse(msg.request_id, ErrorKind.BAD_REQUEST, "no reservation"))
                continue
            out.append(msg)

    def _reject(self, e: WireError) -> None:
        self._rejected += 1
        rid = e.request_id if e.request_id and re.fullmatch(REQUEST_ID, e.request_id) else None
        log.warning("rejected a malformed transfer message (request %s): %s", rid, e)
        if e.peer is not None:
            text = f"malformed: {e}"[:4096]
            self._send(e.peer, StageError(rid, None, ErrorKind.BAD_REQUEST, text, self.name, Stage.DECODE))

    def _send(self, peer: bytes, msg: Any) -> None:
        try:
            self._sock.send(peer, msg, 1.0)
        except WireError as e:
            log.info("transfer reply not delivered: %s", e)

    def _answer(self, request_id: str, msg: Any) -> None:
        peer = self._peers.get(request_id)
        if peer is not None:
            self._send(peer, msg)

    def grant(self, request_id: str, blocks: list[int]) -> None:
        self._answer(request_id, KVGrant(request_id, blocks))

    def queued(self, request_id: str, position: int) -> None:
        self._answer(request_id, KVQueued(request_id, position))

    def refuse(self, request_id: str, kind: ErrorKind, message: str) -> None:
        self._answer(request_id, KVRefuse(request_id, kind, message[:4096]))
        self.forget(request_id)

    def ack(self, request_id: str) -> None:
        self._answer(request_id, KVAck(request_id))
        self.forget(request_id)

    def forget(self, request_id: str) -> None:
        self._peers.pop(request_id, None)

    @property
    def sockets(self) -> list[zmq.Socket]:
        return [self._sock.zmq_socket]

    @property
    def rejected(self) -> int:
        return self._rejected

    def close(self) -> None:
        self._sock.close()
