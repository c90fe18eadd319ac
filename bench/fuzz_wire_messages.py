"""The wire fuzzer's material: one valid message of every wire type, and the mutations made of it.

``Templates`` builds a valid message of each type (``shared.wire.messages``) for a cluster on a
given checkpoint: token ids inside its vocabulary, embeddings and KV of its shapes, replies to the
fuzzer's own inbox, KV offered to the real decode worker; prompts with an image whose embeddings
the fuzzer (or, asked by it, the real encoder) then sends to the real prefill inbox. ``mutate(frames, kind, rng)`` turns the
encoded frames into what a broken or hostile peer sends: a body field flipped to another type or
out of range, a field dropped or added, frames truncated, cut short or added, a tensor frame with
another dtype or shape (or every tensor transposed alike, which the codec cannot tell from a
valid one), tensors of NaN and infinities, the header's bits flipped, its version or type changed, or plain garbage.
Some mutations leave a message valid (a flip to another legal value); the fuzzer tells by
decoding the result itself.
"""

from __future__ import annotations

import hashlib
import io
import random
import time
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import torch
from PIL import Image

from shared.models.config import ModelConfig
from shared.wire import encode
from shared.wire.messages import (
    AbortRequest,
    CacheMiss,
    EncodeRequest,
    ErrorKind,
    ImageEmbeddingResult,
    ImageInput,
    ImagePlacement,
    KVAbort,
    KVAck,
    KVDone,
    KVGrant,
    KVLayer,
    KVProgress,
    KVQueued,
    KVRefuse,
    KVReserve,
    LoadReport,
    MRopeSegment,
    PrefillRequest,
    RouterHeartbeat,
    Sampling,
    SequenceTokens,
    Stage,
    StageError,
    TokenBatch,
)
from shared.wire.schema import MESSAGES

MUTATIONS = (
    "valid",
    "flip_field",
    "drop_field",
    "extra_field",
    "truncate_frames",
    "extra_frame",
    "cut_frame",
    "tensor_dtype",
    "tensor_shape",
    "tensor_transpose",
    "tensor_nan",
    "header_bits",
    "bad_version",
    "unknown_type",
    "garbage",
)
_ODD_VALUES: tuple[Any, ...] = (
    None, -1, 0, 1 << 40, (1 << 64) - 1, -(1 << 63), 1e308, float("nan"), "", "x" * 70_000, "ü\x00",
    b"\xff\x00", [], [1, "a", None], {}, {"k": [1, 2]}, True, 3.5,
)  # fmt: skip


def png(size: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


class Templates:
    """Valid messages of every wire type for one cluster. ``granted`` maps the request ids the decode
    worker granted to the fuzzer to (tokens reserved, next layer to send), so that KV messages can
    follow a real reservation."""

    def __init__(self, cfg: ModelConfig, sink: str, decode_kv: str, prefill_inbox: str, seed: int) -> None:
        self.cfg, self.sink, self.decode_kv, self.prefill_inbox = cfg, sink, decode_kv, prefill_inbox
        self.image = png(32, seed)
        self.image_hash = hashlib.sha256(self.image).hexdigest()
        self.granted: dict[str, list[int]] = {}
        self.used: list[str] = []  # every request id handed out, for the clean-up aborts
        self.with_image: list[str] = []  # prompts sent with one image: their embeddings may follow
        self.make: dict[str, Callable[[random.Random], Any]] = {
            "stage_error": self.stage_error, "encode_request": self.encode_request,
            "cache_miss": self.cache_miss, "image_embedding": self.image_embedding,
            "prefill_request": self.prefill_request, "abort_request": self.abort_request,
            "kv_reserve": self.kv_reserve, "kv_grant": self.kv_grant, "kv_queued": self.kv_queued,
            "kv_refuse": self.kv_refuse, "kv_layer": self.kv_layer, "kv_progress": self.kv_progress,
            "kv_done": self.kv_done, "kv_ack": self.kv_ack, "kv_abort": self.kv_abort,
            "token_batch": self.token_batch, "load_report": self.load_report,
            "router_heartbeat": self.router_heartbeat,
        }  # fmt: skip
        missing = set(MESSAGES) - set(self.make)
        if missing:
            raise RuntimeError(f"the fuzzer has no template for wire message types {sorted(missing)}")

    def rid(self, rng: random.Random) -> str:
        rid = f"fz-{rng.getrandbits(40):010x}"
        self.used.append(rid)
        return rid

    def _known(self, rng: random.Random) -> str:
        """A request id the cluster may hold: a granted one, one used before, or a new one."""
        pools = [list(self.granted), self.used[-64:]]
        pool = rng.choice([p for p in pools if p] or [[]])
        return rng.choice(pool) if pool else self.rid(rng)

    def _tokens(self, rng: random.Random, n: int) -> list[int]:
        return [rng.randrange(self.cfg.text.vocab_size) for _ in range(n)]

    def _sampling(self, rng: random.Random) -> Sampling:
        return Sampling(
            temperature=rng.choice([0.0, 0.7]), top_p=1.0, top_k=rng.choice([0, 5]), min_p=0.0,
            seed=rng.choice([None, 7]), max_tokens=rng.randint(1, 4), stop_token_ids=[],
            ignore_eos=True, logprobs=rng.choice([None, 2]), min_tokens=rng.choice([0, 1]),
            bias_token_ids=(biased := self._tokens(rng, rng.choice([0, 2]))),
            bias_values=[rng.uniform(-100, 100) for _ in biased],
        )  # fmt: skip

    def stage_error(self, rng: random.Random) -> StageError:
        return StageError(
            request_id=self._known(rng), image_index=0, kind=ErrorKind.BAD_IMAGE, message="fuzz",
            source="fuzz", stage=Stage.ENCODER,
        )  # fmt: skip

    def encode_request(self, rng: random.Random) -> EncodeRequest:
        """For a prompt with an image, to the prefill inbox (half the time), else to the fuzzer."""
        data = self.image if rng.random() < 0.7 else None  # None: "you have it" (a cache miss, or a hit)
        image = ImageInput(index=0, content_hash=self.image_hash, data=data)
        if self.with_image and rng.random() < 0.5:
            rid, reply_to = rng.choice(self.with_image[-16:]), self.prefill_inbox
        else:
            rid, reply_to = self.rid(rng), self.sink
        return EncodeRequest(request_id=rid, images=[image], reply_to=reply_to, deadline=time.time() + 5)

    def cache_miss(self, rng: random.Random) -> CacheMiss:
        return CacheMiss(request_id=self.rid(rng), image_indexes=[0], content_hashes=[self.image_hash])

    def image_embedding(self, rng: random.Random) -> ImageEmbeddingResult:
        n, h, s = 4, self.cfg.text.hidden_size, self.cfg.num_deepstack_levels
        rid = (
            rng.choice(self.with_image[-16:]) if self.with_image and rng.random() < 0.7 else self._known(rng)
        )
        return ImageEmbeddingResult(
            request_id=rid, image_index=0, content_hash=self.image_hash, grid_thw=(1, 4, 4),
            embeds=torch.randn(n, h), deepstack=torch.randn(s, n, h),
        )  # fmt: skip

    def prefill_request(self, rng: random.Random) -> PrefillRequest:
        """Text only, or (half the time) with one image of 4 tokens (the fuzzer's PNG, 2x2 merged)."""
        rid, text = self.rid(rng), self._tokens(rng, rng.randint(1, 24))
        layout, images, delta = [], [], 0
        if rng.random() < 0.5:
            cfg, n = self.cfg, len(text)
            text = [*text, cfg.vision_start_token_id, *[cfg.image_token_id] * 4, cfg.vision_end_token_id]
            layout = [
                MRopeSegment(start=0, length=n + 1, position=0, grid=None),
                MRopeSegment(start=n + 1, length=4, position=n + 1, grid=(1, 2, 2)),
                MRopeSegment(start=n + 5, length=1, position=n + 3, grid=None),
            ]
            images = [ImagePlacement(index=0, content_hash=self.image_hash, start=n + 1, num_tokens=4)]
            delta = -2  # the image's 4 tokens take 2 positions
            self.with_image.append(rid)
        return PrefillRequest(
            request_id=rid, prompt_token_ids=text, layout=layout, mrope_delta=delta, images=images,
            sampling=self._sampling(rng), decode_address=self.decode_kv, reply_to=self.sink,
            deadline=time.time() + 5,
        )  # fmt: skip

    def abort_request(self, rng: random.Random) -> AbortRequest:
        return AbortRequest(request_id=self._known(rng), reason="fuzz", source="fuzz")

    def kv_reserve(self, rng: random.Random) -> KVReserve:
        tokens = self._tokens(rng, rng.randint(1, 20))
        return KVReserve(
            request_id=self.rid(rng), token_ids=tokens, num_prompt_tokens=len(tokens), mrope_delta=0,
            sampling=self._sampling(rng), num_layers=self.cfg.text.num_hidden_layers, reply_to=self.sink,
            deadline=time.time() + 5, source="fuzz",
        )  # fmt: skip

    def kv_grant(self, rng: random.Random) -> KVGrant:
        return KVGrant(request_id=self.rid(rng), blocks=[0, 1])

    def kv_queued(self, rng: random.Random) -> KVQueued:
        return KVQueued(request_id=self.rid(rng), position=0)

    def kv_refuse(self, rng: random.Random) -> KVRefuse:
        return KVRefuse(request_id=self.rid(rng), kind=ErrorKind.OVERLOADED, message="fuzz")

    def kv_layer(self, rng: random.Random) -> KVLayer:
        """The next layer of a granted reservation (all of its tokens), else of a made-up one."""
        text = self.cfg.text
        if self.granted:
            rid = rng.choice(list(self.granted))
            n, layer = self.granted[rid]
            self.granted[rid][1] = min(layer + 1, text.num_hidden_layers)
        else:
            rid, n, layer = self._known(rng), 4, 0
        shape = (n, text.num_key_value_heads, text.head_dim)
        layer = min(layer, text.num_hidden_layers - 1)
        return KVLayer(request_id=rid, layer=layer, keys=torch.randn(shape), values=torch.randn(shape))

    def kv_progress(self, rng: random.Random) -> KVProgress:
        return KVProgress(request_id=self._known(rng), num_tokens=1)

    def kv_done(self, rng: random.Random) -> KVDone:
        done = [r for r, (_, layer) in self.granted.items() if layer >= self.cfg.text.num_hidden_layers]
        rid = rng.choice(done) if done else self._known(rng)
        self.granted.pop(rid, None)
        return KVDone(
            request_id=rid, num_layers=self.cfg.text.num_hidden_layers, sampled=self._tokens(rng, 1)
        )

    def kv_ack(self, rng: random.Random) -> KVAck:
        return KVAck(request_id=self.rid(rng))

    def kv_abort(self, rng: random.Random) -> KVAbort:
        return KVAbort(request_id=self._known(rng), reason="fuzz")

    def token_batch(self, rng: random.Random) -> TokenBatch:
        record = SequenceTokens(request_id=self.rid(rng), token_ids=self._tokens(rng, 1))
        return TokenBatch(source="fuzz", records=[record])

    def load_report(self, rng: random.Random) -> LoadReport:
        return LoadReport(source="fuzz", kind=Stage.DECODE, address=self.sink, inbox=self.sink)

    def router_heartbeat(self, rng: random.Random) -> RouterHeartbeat:
        return RouterHeartbeat(inbox=self.sink, time=time.time())


# ----- mutations -----------------------------------------------------------------------------------
def _header(frames: list[bytes]) -> dict[str, Any]:
    return msgpack.unpackb(frames[0], raw=False)


def _pack(header: Any, data: list[bytes]) -> list[bytes]:
    return [msgpack.packb(header, use_bin_type=True), *data]


def _odd(rng: random.Random, value: Any) -> Any:
    """Another value for a field: of another type, out of range, or (sometimes) still legal."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or rng.random() < 0.6:
        return rng.choice(_ODD_VALUES)
    return rng.choice([-value - 1, value * 1_000_003 + 7, value + 1, value - 1])


def _paths(body: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into the body's maps and lists."""
    out: list[tuple] = []
    items = body.items() if isinstance(body, dict) else enumerate(body) if isinstance(body, list) else []
    for k, v in items:
        out.append((*prefix, k))
        out += _paths(v, (*prefix, k))
    return out


def _at(body: Any, path: tuple) -> Any:
    for k in path[:-1]:
        body = body[k]
    return body


def mutate(frames: list[bytes], kind: str, rng: random.Random) -> list[bytes]:
    """``frames`` (a valid message's) as a ``kind`` mutation makes them."""
    header, data = _header(frames), [bytes(f) for f in frames[1:]]
    body, descs = header["body"], header["frames"]
    paths = _paths(body)
    if kind == "valid":
        return [bytes(f) for f in frames]
    if kind == "flip_field" and paths:
        path = rng.choice(paths)
        parent = _at(body, path)
        parent[path[-1]] = _odd(rng, parent[path[-1]])
    elif kind == "drop_field" and paths:
        path = rng.choice(paths)
        parent = _at(body, path)
        if isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent.pop(path[-1])
    elif kind == "extra_field":
        body[rng.choice(["zz", "request_id_", "frames"])] = rng.choice(_ODD_VALUES)
    elif kind == "truncate_frames":
        data = data[: rng.randrange(len(data))] if data else [b""]
    elif kind == "extra_frame":
        data.append(rng.randbytes(rng.randint(0, 64)))
    elif kind == "cut_frame" and data:
        i = rng.randrange(len(data))
        data[i] = data[i][: rng.randrange(len(data[i]))] if data[i] else b"\0"
    elif kind == "tensor_dtype" and descs:
        d = rng.choice(descs)
        d["dtype"] = rng.choice(["int64", "uint8", "float16", "complex64", "bytes", 7, "bfloat16"])
    elif kind == "tensor_shape" and descs:
        d = rng.choice(descs)
        numel = int(np.prod(d["shape"])) if d["shape"] else 1
        d["shape"] = rng.choice([[numel], [1, numel, 1], [numel, 1, 1], [-1, numel], [1] * 9, [numel + 1]])
    elif kind == "tensor_transpose" and any(len(d["shape"]) >= 2 for d in descs):
        for d in descs:  # alike, so that tensors that must agree still do
            if len(d["shape"]) >= 2:
                d["shape"][-2], d["shape"][-1] = d["shape"][-1], d["shape"][-2]
    elif kind == "tensor_nan" and descs:
        for i, d in enumerate(descs):
            if d["dtype"] in ("float32", "float16", "bfloat16"):
                data[i] = _non_finite(d["dtype"], len(data[i]), rng)
    elif kind == "header_bits":
        raw = bytearray(frames[0])
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        return [bytes(raw), *data]
    elif kind == "bad_version":
        header["v"] = rng.choice([0, 2, "1", None])
    elif kind == "unknown_type":
        header["type"] = rng.choice(["nope", "", 5, "ENCODE_REQUEST", None])
    elif kind == "garbage":
        return [rng.randbytes(rng.randint(0, 256)) for _ in range(rng.randint(1, 4))]
    else:  # the mutation does not apply to this message (no tensor): send a wrong type instead
        header["type"] = "kv_ack" if header["type"] != "kv_ack" else "cache_miss"
    return _pack(header, data)


def _non_finite(dtype: str, nbytes: int, rng: random.Random) -> bytes:
    """A frame of ``nbytes`` of ``dtype`` values: NaN, infinities and the dtype's extremes."""
    t = getattr(torch, dtype)
    info = torch.finfo(t)
    pool = torch.tensor([float("nan"), float("inf"), -float("inf"), info.max, info.min, 0.0], dtype=t)
    n = nbytes // pool.element_size()
    picks = torch.tensor([rng.randrange(len(pool)) for _ in range(min(n, 4096))] or [0])
    values = pool[picks].repeat((n + len(picks) - 1) // len(picks))[:n]
    return values.view(torch.uint8).numpy().tobytes()


def frames_of(msg: Any) -> list[bytes]:
    return [bytes(f) for f in encode(msg)]
