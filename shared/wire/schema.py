"""Declaring wire messages: typed dataclasses whose fields carry their validation rules.

A message class is a frozen dataclass registered under a wire name with ``@message("name")``; a
nested record (an image inside a request) is a ``@struct``. Each field's annotation is its type on
the wire and ``rule(...)`` adds bounds. Supported annotations: ``int``, ``float``, ``bool``,
``str``, ``bytes``, a ``str`` Enum, ``torch.Tensor``, another struct, ``list[X]``,
``tuple[X, Y, ...]`` (fixed length), ``tuple[X, ...]`` and ``X | None``. The codec walks these
specs both ways, so a field declared here is validated on every send and every receive.

Rule semantics: ``ge``/``le`` bound numbers (every number inside a list or tuple too);
``min_len``/``max_len`` bound the length of a str, bytes or list; ``pattern`` must match a whole
str (every str inside a list too); ``dtypes``/``ndim`` constrain a tensor. A class may define
``validate(self)`` for checks across fields (shapes that must agree); it raises ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

T = TypeVar("T")

# Default cap on any str without its own max_len: headers are small, payloads travel as frames.
MAX_STR_LEN = 64 * 1024


@dataclass(frozen=True)
class Rule:
    ge: float | None = None
    le: float | None = None
    min_len: int = 0
    max_len: int | None = None
    pattern: str | None = None
    dtypes: tuple[str, ...] | None = None
    ndim: int | None = None

    def compiled(self) -> re.Pattern[str] | None:
        return re.compile(self.pattern) if self.pattern is not None else None


NO_RULE = Rule()


def rule(
    *, default: Any = dataclasses.MISSING, default_factory: Any = dataclasses.MISSING, **bounds: Any
) -> Any:
    """A dataclass field with wire bounds, e.g. ``index: int = rule(ge=0, le=63)``; a list field
    defaults through ``default_factory=list``. A field with a default may be absent on the wire
    (the receiver fills in the default); ``encode`` always sends every field."""
    return field(default=default, default_factory=default_factory, metadata={"wire": Rule(**bounds)})


# ----- compiled field types ------------------------------------------------------------------------
@dataclass(frozen=True)
class Node:
    """One level of a field's type: kind is int/float/bool/str/bytes/enum/tensor/struct/list/tuple/
    optional; ``args`` holds the inner nodes (or the enum/struct class in ``cls``)."""

    kind: str
    args: tuple[Node, ...] = ()
    cls: type | None = None
    variadic: bool = False


@dataclass(frozen=True)
class FieldSpec:
    name: str
    node: Node
    rule: Rule
    pattern: re.Pattern[str] | None
    required: bool


@dataclass(frozen=True)
class Schema:
    cls: type
    name: str
    fields: tuple[FieldSpec, ...]
    by_name: dict[str, FieldSpec]


SCALARS: dict[Any, str] = {int: "int", float: "float", bool: "bool", str: "str", bytes: "bytes"}
MESSAGES: dict[str, Schema] = {}  # wire name -> schema; every message type of every service
_SCHEMAS: dict[type, Schema] = {}


def _compile_type(tp: Any, owner: str) -> Node:
    if tp in SCALARS:
        return Node(SCALARS[tp])
    if tp is torch.Tensor:
        return Node("tensor")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if not issubclass(tp, str):
            raise TypeError(f"{owner}: enum {tp.__name__} must be a str Enum")
        return Node("enum", cls=tp)
    if isinstance(tp, type) and tp in _SCHEMAS:
        return Node("struct", cls=tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1 or len(args) != 2:
            raise TypeError(f"{owner}: only `X | None` unions are supported, got {tp}")
        return Node("optional", (_compile_type(inner[0], owner),))
    if origin is list and len(args) == 1:
        return Node("list", (_compile_type(args[0], owner),))
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return Node("list", (_compile_type(args[0], owner),), variadic=True)
    if origin is tuple and args:
        return Node("tuple", tuple(_compile_type(a, owner) for a in args))
    raise TypeError(f"{owner}: unsupported wire type {tp!r}")


def _register(cls: type, name: str) -> Schema:
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        r = f.metadata.get("wire", NO_RULE)
        node = _compile_type(hints[f.name], f"{cls.__name__}.{f.name}")
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        specs.append(FieldSpec(f.name, node, r, r.compiled(), required))
    schema = Schema(cls, name, tuple(specs), {s.name: s for s in specs})
    _SCHEMAS[cls] = schema
    return schema


# Type checkers see messages and structs as the frozen dataclasses they are (PEP 681).
@typing.dataclass_transform(frozen_default=True, field_specifiers=(field, rule))
def struct(cls: type[T]) -> type[T]:
    """A record nested inside messages (not sendable on its own)."""
    cls = dataclass(frozen=True, eq=False)(cls)
    _register(cls, cls.__name__)
    return cls


@typing.dataclass_transform(frozen_default=True, field_specifiers=(field, rule))
def message(name: str) -> Callable[[type[T]], type[T]]:
    """Register a top-level message type under its wire name (unique across the project)."""

    def wrap(cls: type[T]) -> type[T]:
        if name in MESSAGES:
            raise TypeError(f"wire message name {name!r} is already taken by {MESSAGES[name].cls.__name__}")
        cls = dataclass(frozen=True, eq=False)(cls)
        MESSAGES[name] = _register(cls, name)
        setattr(cls, "WIRE_NAME", name)  # noqa: B010 (a class attribute the declaration does not have)
        return cls

    return wrap


def schema_of(cls: type) -> Schema:
    try:
        return _SCHEMAS[cls]
    except KeyError:
        raise TypeError(f"{cls.__name__} is not a wire message or struct") from None


def lookup(name: str) -> Schema | None:
    return MESSAGES.get(name)
