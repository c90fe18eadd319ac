"""The router's side of prefill and decode: submit a request, collect its tokens, notice failures.

Used by the tests (which play the router) and the benchmark; the router service can reuse it.
A request goes: images to an encoder (``EncodeRequest`` with ``reply_to`` = the prefill worker's
embedding inbox), the ``PrefillRequest`` to the prefill worker, then tokens arrive in this
client's inbox: the first from prefill, the rest from the chosen decode worker, as
``TokenBatch``es; failures as ``StageError``. Decode workers' ``LoadReport``s land in the same
inbox and double as heartbeats: a worker silent for ``heartbeat_timeout_s`` is taken as gone,
its open requests end with an error, and prefill is told to drop them (freeing their blocks).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.clients.encoder import EncoderClient
from shared.engine import SamplingParams
from shared.multimodal.image import image_hash
from shared.multimodal.mrope import GridTHW, mrope_layout
from shared.transfer import sampling_to_wire
from shared.wire import DealerSocket, PullSocket, PushPool, StageError, WireError
from shared.wire.messages import (
    AbortRequest,
    ErrorKind,
    FinishReason,
    ImagePlacement,
    LoadReport,
    MRopeSegment,
    PrefillRequest,
    Stage,
    TokenBatch,
)


@dataclass
class Outcome:
    decode: str  # the decode worker's KV address
    tokens: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None  # None: still going
    error: StageError | None = None
    submitted: float = field(default_factory=time.monotonic)
    token_times: list[float] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.error is not None


@dataclass(frozen=True)
class DecodeTarget:
    kv: str  # KVReceiver address
    control: str  # AbortRequest inbox


class DisaggClient:
    def __init__(
        self, prefill: str, prefill_inbox: str, encoder: str | None, image_token_id: int, merge_size: int,
        heartbeat_timeout_s: float = 3.0, host: str = "127.0.0.1",
    ) -> None:  # fmt: skip
        self.inbox = PullSocket(f"tcp://{host}:0", bind=True, accept=[TokenBatch, StageError, LoadReport])
        self.reply_to = self.inbox.endpoint
        self.prefill = DealerSocket(prefill, bind=False, accept=[StageError])
        self.prefill_inbox = prefill_inbox
        self.encoder = EncoderClient(encoder) if encoder else None
        self.controls = PushPool()
        self.image_token_id, self.merge_size = image_token_id, merge_size
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.outcomes: dict[str, Outcome] = {}
        self.targets: dict[str, DecodeTarget] = {}
        self.heard: dict[str, float] = {}  # decode KV address -> last load report (monotonic)
        self.loads: dict[str, LoadReport] = {}

    def submit(
        self, request_id: str, prompt_ids: Sequence[int], images: Sequence[tuple[bytes, GridTHW]],
        params: SamplingParams, decode: DecodeTarget, timeout_s: float = 60.0,
    ) -> PrefillRequest:  # fmt: skip
        """Send the images to the encoder and the prompt (placeholders already expanded) to prefill."""
        grids = [g for _, g in images]
        layout = mrope_layout(prompt_ids, grids, self.image_token_id, self.merge_size) if images else None
        hashes = [image_hash(data) for data, _ in images]
        image_segs = [s for s in layout.segments if s.grid is not None] if layout else []
        msg = PrefillRequest(
            request_id=request_id,
            prompt_token_ids=list(prompt_ids),
            layout=[MRopeSegment(s.start, s.length, s.position, s.grid) for s in layout.segments]
            if layout
            else [],
            mrope_delta=layout.delta if layout else 0,
            images=[
                ImagePlacement(i, h, s.start, s.length)
                for i, (h, s) in enumerate(zip(hashes, image_segs, strict=True))
            ],
            sampling=sampling_to_wire(params),
            decode_address=decode.kv,
            reply_to=self.reply_to,
            deadline=time.time() + timeout_s,
        )
        self.outcomes[request_id] = Outcome(decode.kv)
        self.targets[decode.kv] = decode
        self.heard.setdefault(decode.kv, time.monotonic())
        self.prefill.send(msg)
        if images:
            assert self.encoder is not None, "images need an encoder"
            self.encoder.submit(
                request_id, {i: data for i, (data, _) in enumerate(images)}, self.prefill_inbox
            )
        return msg

    def abort(self, request_id: str, reason: str = "client gone") -> None:
        """Tell prefill and the request's decode worker to drop it (best effort)."""
        abort = AbortRequest(request_id, reason, "router")
        with contextlib.suppress(WireError):
            self.prefill.send(abort, 1.0)
        target = self.targets.get(self.outcomes[request_id].decode)
        if target is not None:
            with contextlib.suppress(WireError):
                self.controls.send(target.control, abort, 0.2)

    def collect(self, timeout: float) -> dict[str, Outcome]:
        """Receive until every submitted request is done or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while not all(o.done for o in self.outcomes.values()) and time.monotonic() < deadline:
            self.poll(0.05)
        return self.outcomes

    def poll(self, timeout: float) -> None:
        """Handle what arrived (waiting up to ``timeout`` for the first message), then heartbeats."""
        for _ in range(10_000):
            try:
                msg = self.inbox.recv(timeout)
            except WireError:
                continue
            if msg is None:
                break
            timeout = 0.0
            self._handle(msg, time.monotonic())
        self._check_heartbeats(time.monotonic())

    def _handle(self, msg: TokenBatch | StageError | LoadReport, now: float) -> None:
        if isinstance(msg, LoadReport):
            self.heard[msg.address] = now
            self.loads[msg.address] = msg
        elif isinstance(msg, TokenBatch):
            for rec in msg.records:
                o = self.outcomes.get(rec.request_id)
                if o is not None and not o.done:
                    o.tokens += rec.token_ids
                    o.token_times += [now] * len(rec.token_ids)
                    o.finish_reason = rec.finish_reason
        elif isinstance(msg, StageError) and msg.request_id in self.outcomes:
            self.outcomes[msg.request_id].error = msg

    def _check_heartbeats(self, now: float) -> None:
        gone = {kv for kv, t in self.heard.items() if now - t > self.heartbeat_timeout_s}
        for rid, o in self.outcomes.items():
            if o.decode in gone and not o.done:
                text = f"decode worker {o.decode} stopped reporting"
                o.error = StageError(rid, None, ErrorKind.UNAVAILABLE, text, "router", Stage.DECODE)
                self.abort(rid, "decode worker gone")

    def close(self) -> None:
        for s in (self.inbox, self.prefill):
            s.close()
        self.controls.close()
        if self.encoder:
            self.encoder.close()
