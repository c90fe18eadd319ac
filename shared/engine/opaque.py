"""Opaque engine ops: Python functions that a compiled step calls as single graph nodes.

The compiled decode step (``decode_graph.py``) must not trace into two things: the routed experts
(``torch._grouped_mm`` has no float32 fake kernel) and the CPU's gather attention (a custom op
keeps its index arithmetic out of Inductor). Each is defined here once as an operator of the
``epd`` namespace with a kernel for every backend (``CompositeExplicitAutograd``: the same Python
runs on CPU and GPU; the engine runs without autograd) and a fake kernel that gives the output's
shape to the compiler.

Why not ``torch.library.custom_op``: it wraps every call in checks (output aliasing, a disabled
Dynamo frame) that made a call of ``epd::routed_experts`` cost 55 us over the Python function
against 16 us for the operator defined this way (development VM, 2026-12-06), and a decode step
calls these twice per layer: 96 calls a step at 48 layers. What the compiler sees is the same node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

_LIB = torch.library.Library("epd", "FRAGMENT")


def opaque_op(schema: str, fake: Callable[..., torch.Tensor]) -> Callable[[Callable[..., Any]], Any]:
    """Decorator: define ``epd::<schema>`` with the decorated function as its kernel and ``fake``
    as its shape function; returns the operator (call it like the function)."""

    def define(fn: Callable[..., Any]) -> Any:
        name = schema.split("(", 1)[0]
        _LIB.define(schema)
        _LIB.impl(name, fn, "CompositeExplicitAutograd")
        torch.library.register_fake(f"epd::{name}", fake, lib=_LIB)
        return getattr(torch.ops.epd, name).default

    return define
