"""The codec: a message <-> ZMQ frames, validating everything that comes in.

Frames of one message::

    [0]   msgpack header {"v": PROTOCOL_VERSION, "type": wire name, "body": {field: value},
                          "frames": [{"dtype": "bfloat16" | ... | "bytes", "shape": [...]}, ...]}
    [1..] one raw frame per tensor or bytes field, in the order of "frames"

In the body a tensor or bytes field holds the index of its frame. ``decode`` checks, in order: the
frame count and header size; that the header is a well-formed msgpack map of exactly those keys;
the version; that the type is known and expected here; every frame descriptor against its frame's
byte count (so a truncated or padded frame is caught); every body field against its declared type
and rule (unknown and missing fields are errors); that every frame is used by exactly one field;
then the class's own cross-field ``validate``. Any failure is a ``WireError`` (an unexpected
exception on the way too, so a receiver catches one type); nothing from the peer is ever executed
or unpickled. ``encode`` applies the same checks to outgoing messages.

The body is first decoded by the message type's compiled decoder (``compiled``: the same checks,
chosen once per type); only a body it gives up on takes the generic walk below, which names the
field and the problem.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence
from typing import Any

import msgpack
import torch

from shared.wire.compiled import PLAIN, plain_items_ok, struct_decoder
from shared.wire.errors import WireError
from shared.wire.schema import MAX_STR_LEN, NO_RULE, FieldSpec, Node, Rule, Schema, lookup, schema_of
from shared.wire.tensors import BYTES, bytes_frame, check_descriptor, frame_buffer, frame_tensor, tensor_frame

PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 1 << 20
MAX_FRAMES = 4096
_HEADER_KEYS = {"v", "type", "body", "frames"}
Frame = Any  # bytes, memoryview or zmq.Frame: anything with the buffer protocol


# ----- encode --------------------------------------------------------------------------------------
def encode(msg: Any, *, check: bool = True) -> list[bytes | memoryview]:
    """Frames of ``msg``: header first, then the raw tensor/bytes frames (views, not copies)."""
    schema = schema_of(type(msg))
    if not hasattr(type(msg), "WIRE_NAME"):
        raise WireError(f"{type(msg).__name__} is a nested struct, not a message")
    descs: list[dict[str, Any]] = []
    payloads: list[bytes | memoryview] = []
    body = _encode_struct(msg, schema, descs, payloads)
    header = {"v": PROTOCOL_VERSION, "type": schema.name, "body": body, "frames": descs}
    frames: list[bytes | memoryview] = [msgpack.packb(header, use_bin_type=True), *payloads]
    if check:
        _decode(frames, None, copy_bytes=False)  # a receiver's validation; views only, no data copied
    return frames


def _encode_struct(obj: Any, schema: Schema, descs: list, payloads: list) -> dict[str, Any]:
    return {f.name: _encode_value(getattr(obj, f.name), f.node, descs, payloads) for f in schema.fields}


def _encode_value(value: Any, node: Node, descs: list, payloads: list) -> Any:
    kind = node.kind
    if kind == "optional":
        return None if value is None else _encode_value(value, node.args[0], descs, payloads)
    if kind in ("tensor", "bytes"):
        if kind == "tensor" and not isinstance(value, torch.Tensor):
            raise WireError(f"expected a tensor, got {type(value).__name__}")
        if kind == "bytes" and not isinstance(value, (bytes, bytearray, memoryview)):
            raise WireError(f"expected bytes, got {type(value).__name__}")
        desc, payload = tensor_frame(value) if kind == "tensor" else bytes_frame(value)
        descs.append(desc)
        payloads.append(payload)
        return len(descs) - 1
    if kind == "struct":
        if not isinstance(value, node.cls):  # type: ignore[arg-type]
            raise WireError(f"expected a {node.cls.__name__}, got {type(value).__name__}")  # type: ignore[union-attr]
        return _encode_struct(value, schema_of(node.cls), descs, payloads)  # type: ignore[arg-type]
    if kind in ("list", "tuple"):
        inner = node.args
        if not isinstance(value, (list, tuple)):
            raise WireError(f"expected a sequence, got {type(value).__name__}")
        if kind == "list" and inner[0].kind in PLAIN:
            return list(value)  # scalars go as they are: the decode pass checks them
        return [
            _encode_value(v, inner[0] if kind == "list" else inner[i], descs, payloads)
            for i, v in enumerate(value)
        ]
    if kind == "enum":
        return value.value if isinstance(value, enum.Enum) else value
    return value  # scalars: checked on the decode pass


# ----- decode --------------------------------------------------------------------------------------
class _Ctx:
    def __init__(
        self, msg_type: str, frames: Sequence[Frame], descs: list[tuple[str, list[int]]], copy_bytes: bool
    ) -> None:
        self.msg_type = msg_type
        self.copy_bytes = copy_bytes
        self.frames = frames
        self.descs = descs
        self.used = [False] * len(descs)
        self.request_id: str | None = None

    def fail(self, path: str, problem: str) -> WireError:
        return WireError(
            f"{self.msg_type}.{path}: {problem}", request_id=self.request_id, msg_type=self.msg_type
        )


def decode(frames: Sequence[Frame], expect: Iterable[type] | None = None) -> Any:
    """Validate ``frames`` and build the message; ``expect`` limits the accepted message types.

    Tensors in the result view the frames' memory (no copy); bytes fields are copied out. Raises
    ``WireError`` and nothing else, whatever the frames hold.
    """
    try:
        return _decode(frames, expect, copy_bytes=True)
    except WireError:
        raise
    except Exception as e:  # a check this module missed must still be the peer's error, not ours
        raise WireError(f"undecodable message: {type(e).__name__}: {e}") from None


def _decode(frames: Sequence[Frame], expect: Iterable[type] | None, copy_bytes: bool) -> Any:
    if not frames:
        raise WireError("empty message: no header frame")
    if len(frames) > MAX_FRAMES + 1:
        raise WireError(f"{len(frames)} frames in one message; at most {MAX_FRAMES + 1} are allowed")
    header_buf = frame_buffer(frames[0])
    if len(header_buf) > MAX_HEADER_BYTES:
        raise WireError(f"header frame of {len(header_buf)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(header_buf, raw=False, strict_map_key=True, use_list=True)
    except Exception as e:  # msgpack raises several types on garbage; all mean the same here
        raise WireError(f"header frame is not valid msgpack: {type(e).__name__}: {e}") from None
    if not isinstance(header, dict) or set(header) != _HEADER_KEYS:
        keys = sorted(map(str, header)) if isinstance(header, dict) else type(header).__name__
        raise WireError(f"header must be a map with keys {sorted(_HEADER_KEYS)}, got {keys}")
    name, body, descs = header["type"], header["body"], header["frames"]
    rid = body.get("request_id") if isinstance(body, dict) else None
    rid = rid if isinstance(rid, str) and len(rid) <= 256 else None
    if header["v"] != PROTOCOL_VERSION:
        raise WireError(f"protocol version {header['v']!r}, expected {PROTOCOL_VERSION}", request_id=rid)
    schema = lookup(name) if isinstance(name, str) else None
    if schema is None:
        raise WireError(f"unknown message type {name!r}", request_id=rid)
    if expect is not None and schema.cls not in tuple(expect):
        allowed = ", ".join(schema_of(c).name for c in expect)
        raise WireError(f"message type {name!r} is not accepted here (expected {allowed})", request_id=rid)
    if not isinstance(descs, list):
        raise WireError(f"{name}: 'frames' must be a list", request_id=rid, msg_type=name)
    if len(descs) != len(frames) - 1:
        raise WireError(
            f"{name}: header describes {len(descs)} data frames but {len(frames) - 1} arrived "
            "(truncated or extra frames)",
            request_id=rid,
            msg_type=name,
        )
    checked = []
    for i, d in enumerate(descs):
        try:
            checked.append(check_descriptor(d, len(frame_buffer(frames[i + 1])), f"{name} frame {i + 1}"))
        except WireError as e:
            raise WireError(str(e), request_id=rid, msg_type=name) from None
    ctx = _Ctx(name, frames, checked, copy_bytes)
    ctx.request_id = rid
    if not isinstance(body, dict):
        raise ctx.fail("body", f"must be a map, got {type(body).__name__}")
    try:
        msg = struct_decoder(schema)(body, ctx)  # the fast path (``compiled``): one pass if all is well
    except Exception:  # something failed: walk again, generically, to say what (or to decode it)
        ctx.used = [False] * len(checked)
        msg = _decode_struct(body, schema, ctx, "")
    unused = [i + 1 for i, u in enumerate(ctx.used) if not u]
    if unused:
        raise ctx.fail("frames", f"data frame(s) {unused} are not referenced by any field (extra frames)")
    return msg


def _decode_struct(raw: dict, schema: Schema, ctx: _Ctx, prefix: str) -> Any:
    unknown = [k for k in raw if k not in schema.by_name]
    if unknown:
        raise ctx.fail(prefix or "body", f"unknown field(s) {sorted(map(str, unknown))}")
    values: dict[str, Any] = {}
    for spec in schema.fields:
        path = f"{prefix}{spec.name}"
        if spec.name not in raw:
            if spec.required:
                raise ctx.fail(path, "required field is missing")
            continue
        values[spec.name] = _decode_value(raw[spec.name], spec.node, spec, ctx, path)
    try:
        obj = schema.cls(**values)
        check = getattr(obj, "validate", None)
        if check is not None:
            check()
    except Exception as e:  # a class's own checks may trip over any value the peer chose
        text = str(e) if isinstance(e, (ValueError, TypeError)) else f"{type(e).__name__}: {e}"
        raise ctx.fail(prefix.rstrip(".") or "body", text) from None
    return obj


def _decode_value(value: Any, node: Node, spec: FieldSpec, ctx: _Ctx, path: str, item: bool = False) -> Any:
    """``item``: inside a list or tuple, where the rule's length bounds belong to the container."""
    kind, r = node.kind, spec.rule
    if kind == "optional":
        return None if value is None else _decode_value(value, node.args[0], spec, ctx, path, item)
    if kind == "struct":
        if not isinstance(value, dict):
            raise ctx.fail(path, f"expected a map, got {_tname(value)}")
        return _decode_struct(value, schema_of(node.cls), ctx, f"{path}.")  # type: ignore[arg-type]
    if kind in ("list", "tuple"):
        if not isinstance(value, list):
            raise ctx.fail(path, f"expected a list, got {_tname(value)}")
        if kind == "tuple" and len(value) != len(node.args):
            raise ctx.fail(path, f"expected {len(node.args)} items, got {len(value)}")
        if kind == "list":
            _check_len(len(value), r, ctx, path)
            inner = node.args[0]
            if inner.kind in PLAIN and plain_items_ok(value, inner.kind, spec):
                items = [float(v) for v in value] if inner.kind == "float" else value
                return items if not node.variadic else tuple(items)
        items = [
            _decode_value(
                v, node.args[0] if kind == "list" else node.args[i], spec, ctx, f"{path}[{i}]", True
            )
            for i, v in enumerate(value)
        ]
        return items if kind == "list" and not node.variadic else tuple(items)
    if kind in ("tensor", "bytes"):
        return _decode_frame(value, kind, r, ctx, path)
    return _decode_scalar(value, node, spec, ctx, path, item)


def _decode_scalar(value: Any, node: Node, spec: FieldSpec, ctx: _Ctx, path: str, item: bool) -> Any:
    kind, r = node.kind, spec.rule
    if kind == "bool":
        if type(value) is not bool:
            raise ctx.fail(path, f"expected a bool, got {_tname(value)}")
        return value
    if kind == "int":
        if type(value) is not int:
            raise ctx.fail(path, f"expected an int, got {_tname(value)}")
        _check_range(value, r, ctx, path)
        return value
    if kind == "float":
        if type(value) not in (int, float):
            raise ctx.fail(path, f"expected a number, got {_tname(value)}")
        if not math.isfinite(value):
            raise ctx.fail(path, f"must be finite, got {value}")
        _check_range(value, r, ctx, path)
        return float(value)
    if kind in ("str", "enum"):
        if type(value) is not str:
            raise ctx.fail(path, f"expected a string, got {_tname(value)}")
        if kind == "enum":
            try:
                return node.cls(value)  # type: ignore[misc]
            except ValueError:
                allowed = ", ".join(m.value for m in node.cls)  # type: ignore[union-attr]
                raise ctx.fail(path, f"{value[:64]!r} is not one of: {allowed}") from None
        _check_len(len(value), NO_RULE if item else r, ctx, path, default_max=MAX_STR_LEN)
        if spec.pattern is not None and not spec.pattern.fullmatch(value):
            raise ctx.fail(path, f"{value[:64]!r} does not match {spec.rule.pattern}")
        return value
    raise ctx.fail(path, f"internal: unknown node kind {kind}")  # pragma: no cover


def _decode_frame(value: Any, kind: str, r: Rule, ctx: _Ctx, path: str) -> Any:
    if type(value) is not int or not 0 <= value < len(ctx.descs):
        raise ctx.fail(path, f"expected a data frame index in [0, {len(ctx.descs)}), got {value!r}")
    if ctx.used[value]:
        raise ctx.fail(path, f"data frame {value + 1} is referenced twice")
    ctx.used[value] = True
    dtype, shape = ctx.descs[value]
    buf = frame_buffer(ctx.frames[value + 1])
    if kind == "bytes":
        if dtype != BYTES:
            raise ctx.fail(path, f"expected a bytes frame, frame {value + 1} holds a {dtype} tensor")
        _check_len(len(buf), r, ctx, path)
        return bytes(buf) if ctx.copy_bytes else buf
    if dtype == BYTES:
        raise ctx.fail(path, f"expected a tensor, frame {value + 1} holds raw bytes")
    if r.dtypes is not None and dtype not in r.dtypes:
        raise ctx.fail(path, f"dtype {dtype} not allowed (allowed: {', '.join(r.dtypes)})")
    if r.ndim is not None and len(shape) != r.ndim:
        raise ctx.fail(path, f"expected {r.ndim} dimensions, got shape {shape}")
    return frame_tensor(buf, dtype, shape)


def _check_range(value: float, r: Rule, ctx: _Ctx, path: str) -> None:
    if (r.ge is not None and value < r.ge) or (r.le is not None and value > r.le):
        raise ctx.fail(path, f"{value} is outside [{r.ge}, {r.le}]")


def _check_len(n: int, r: Rule, ctx: _Ctx, path: str, default_max: int | None = None) -> None:
    hi = r.max_len if r.max_len is not None else default_max
    if n < r.min_len or (hi is not None and n > hi):
        raise ctx.fail(path, f"length {n} is outside [{r.min_len}, {hi}]")


def _tname(value: Any) -> str:
    return "nil" if value is None else type(value).__name__
