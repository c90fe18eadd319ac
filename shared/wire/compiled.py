"""The codec's fast path: one decoder per message type, built from its schema on first use.

Owns the speed of ``decode``, not its answers. ``struct_decoder(schema)`` returns a function
(body, ctx) -> message that makes the same checks as the codec's generic walk (``codec``), with
each field's checks chosen once, when the schema is first decoded, instead of dispatching on the
field's kind and building its path string for every field of every message. It does not explain
anything: on a failed check (or any exception) it gives up, and ``codec`` walks the same body
again generically, which names the field and the problem. A valid message costs one pass, a bad
one two. The fast path must never accept what the generic walk refuses: tests/wire/test_compiled.py
decodes the fuzzer's mutations of every message type both ways.

The bulk checks of lists of scalars (``plain_items_ok``) live here; the generic walk uses them too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from shared.wire.schema import MAX_STR_LEN, NO_RULE, FieldSpec, Node, Schema, schema_of
from shared.wire.tensors import BYTES, frame_buffer, frame_tensor

Decoder = Callable[[Any, Any], Any]  # (raw value from msgpack, codec context) -> decoded value

PLAIN = frozenset({"int", "float", "bool", "str"})  # list items checked in bulk
_PLAIN_TYPES: dict[str, set[type]] = {"int": {int}, "float": {int, float}, "bool": {bool}, "str": {str}}
_DECODERS: dict[type, Decoder] = {}


class Slow(Exception):
    """A check failed: the generic walk decodes the message again and says what is wrong."""


_SLOW = Slow()


def plain_items_ok(value: list, kind: str, spec: FieldSpec) -> bool:
    """Whether every item of a list of scalars passes the checks the generic walk makes one by one,
    decided in bulk (C loops, no path strings); False sends the list through the item-wise checks,
    which name the first bad item."""
    if not value:
        return True
    if not set(map(type, value)) <= _PLAIN_TYPES[kind]:
        return False
    r = spec.rule
    if kind in ("int", "float"):
        if kind == "float" and not all(map(math.isfinite, value)):
            return False
        return (r.ge is None or min(value) >= r.ge) and (r.le is None or max(value) <= r.le)
    if kind == "str":
        if max(map(len, value)) > MAX_STR_LEN:
            return False
        return spec.pattern is None or all(map(spec.pattern.fullmatch, value))
    return True


def struct_decoder(schema: Schema) -> Decoder:
    """The fast decoder of a message or struct body (a dict from msgpack), built once per type."""
    dec = _DECODERS.get(schema.cls)
    if dec is None:
        dec = _DECODERS[schema.cls] = _struct(schema)
    return dec


def _struct(schema: Schema) -> Decoder:
    cls, known = schema.cls, schema.by_name.keys()
    fields = tuple((s.name, s.required, _value(s.node, s, item=False)) for s in schema.fields)
    validate = getattr(cls, "validate", None)

    def dec(raw: Any, ctx: Any) -> Any:
        if type(raw) is not dict or not raw.keys() <= known:
            raise _SLOW
        values = {}
        for name, required, field in fields:
            if name in raw:
                values[name] = field(raw[name], ctx)
            elif required:
                raise _SLOW
        obj = cls(**values)
        if validate is not None:
            obj.validate()
        return obj

    return dec


def _value(node: Node, spec: FieldSpec, item: bool) -> Decoder:
    """``item``: inside a list or tuple, where a str's length bounds belong to the container."""
    kind = node.kind
    if kind == "optional":
        inner = _value(node.args[0], spec, item)
        return lambda v, ctx: None if v is None else inner(v, ctx)
    if kind == "struct":
        assert node.cls is not None
        return struct_decoder(schema_of(node.cls))  # structs cannot nest themselves: no cycle
    if kind == "list":
        return _list(node, spec)
    if kind == "tuple":
        return _tuple(node, spec)
    if kind in ("tensor", "bytes"):
        return _frame(kind, spec)
    return _scalar(node, spec, item)


def _list(node: Node, spec: FieldSpec) -> Decoder:
    lo, hi, variadic = spec.rule.min_len, spec.rule.max_len, node.variadic
    inner = node.args[0]
    if inner.kind in PLAIN:
        kind = inner.kind

        def plain(v: Any, ctx: Any) -> Any:
            if type(v) is not list or len(v) < lo or (hi is not None and len(v) > hi):
                raise _SLOW
            if not plain_items_ok(v, kind, spec):
                raise _SLOW
            items = [float(x) for x in v] if kind == "float" else v
            return tuple(items) if variadic else items

        return plain
    each = _value(inner, spec, item=True)

    def items(v: Any, ctx: Any) -> Any:
        if type(v) is not list or len(v) < lo or (hi is not None and len(v) > hi):
            raise _SLOW
        out = [each(x, ctx) for x in v]
        return tuple(out) if variadic else out

    return items


def _tuple(node: Node, spec: FieldSpec) -> Decoder:
    parts = tuple(_value(a, spec, item=True) for a in node.args)
    n = len(parts)

    def dec(v: Any, ctx: Any) -> Any:
        if type(v) is not list or len(v) != n:
            raise _SLOW
        return tuple(part(x, ctx) for part, x in zip(parts, v, strict=True))

    return dec


def _frame(kind: str, spec: FieldSpec) -> Decoder:
    r = spec.rule
    lo, hi, dtypes, ndim = r.min_len, r.max_len, r.dtypes, r.ndim

    def dec(v: Any, ctx: Any) -> Any:
        descs, used = ctx.descs, ctx.used
        if type(v) is not int or not 0 <= v < len(descs) or used[v]:
            raise _SLOW
        used[v] = True
        dtype, shape = descs[v]
        buf = frame_buffer(ctx.frames[v + 1])
        if kind == "bytes":
            if dtype != BYTES or len(buf) < lo or (hi is not None and len(buf) > hi):
                raise _SLOW
            return bytes(buf) if ctx.copy_bytes else buf
        if (
            dtype == BYTES
            or (dtypes is not None and dtype not in dtypes)
            or (ndim is not None and len(shape) != ndim)
        ):
            raise _SLOW
        return frame_tensor(buf, dtype, shape)

    return dec


def _scalar(node: Node, spec: FieldSpec, item: bool) -> Decoder:
    kind, r = node.kind, spec.rule
    ge, le = r.ge, r.le
    if kind == "bool":

        def boolean(v: Any, ctx: Any) -> Any:
            if type(v) is not bool:
                raise _SLOW
            return v

        return boolean
    if kind == "int":

        def integer(v: Any, ctx: Any) -> Any:
            if type(v) is not int or (ge is not None and v < ge) or (le is not None and v > le):
                raise _SLOW
            return v

        return integer
    if kind == "float":

        def number(v: Any, ctx: Any) -> Any:
            if type(v) not in (int, float) or not math.isfinite(v):
                raise _SLOW
            if (ge is not None and v < ge) or (le is not None and v > le):
                raise _SLOW
            return float(v)

        return number
    if kind == "enum":
        cls = node.cls
        assert cls is not None

        def member(v: Any, ctx: Any) -> Any:
            if type(v) is not str:
                raise _SLOW
            return cls(v)  # ValueError: the generic walk lists the allowed values

        return member
    if kind == "str":
        bounds = NO_RULE if item else r
        lo = bounds.min_len
        hi = bounds.max_len if bounds.max_len is not None else MAX_STR_LEN
        pattern = spec.pattern

        def text(v: Any, ctx: Any) -> Any:
            if type(v) is not str or not lo <= len(v) <= hi:
                raise _SLOW
            if pattern is not None and not pattern.fullmatch(v):
                raise _SLOW
            return v

        return text
    raise TypeError(f"internal: no fast decoder for node kind {kind}")  # pragma: no cover
