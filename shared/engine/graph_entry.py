"""A ``torch.compile`` whose calls skip Dynamo's entry once a shape has been through it.

Owns how the decode step's compiled graph is entered. Every call through ``torch.compile`` runs
Dynamo's frame hook, its guards and the prologue it generated, which fetches each of the model's
parameters through the module tree (the graph takes them as inputs): ~90 us a call on this project's
2-core CPU, a tenth of the demo model's decode step. vLLM skips the same cost by dispatching to the
compiled code itself; this does it one level lower, at the Inductor function:

- the backend compiles with Inductor exactly as ``torch.compile(options=...)`` would and keeps, per
  graph, a recipe of its inputs from their Dynamo sources: one of the call's tensors, a size of one,
  or a tensor reached from the compiled function's ``self`` (a parameter, a pool view; held by
  reference, as the graph already does);
- a call whose input shapes are new goes through Dynamo (guards checked, recompiling if they fail);
  if the graph that ran has a recipe, and the recipe applied to this call gives exactly the inputs
  Dynamo gave it (same tensor objects, same sizes), the shape is marked and later calls with it
  assemble the inputs themselves and call Inductor's function directly.

What a direct call no longer checks is what Dynamo's guards check beyond the shapes: that ``self``'s
tensors are the same objects and global state (grad mode, dtype defaults) unchanged. The caller
promises that (the engine never swaps its weights or pool and runs every step under inference
mode). A graph whose inputs the recipe cannot describe is always entered through Dynamo.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch

log = logging.getLogger(__name__)
_LOCAL = re.compile(r"^L\['(\w+)'\]$")
_SIZE = re.compile(r"^L\['(\w+)'\]\.size\(\)\[(\d+)\]$")
_SELF = "L['self']"


class _Graph:
    """One compiled graph: Inductor's function and how to assemble its inputs (None: it cannot)."""

    def __init__(self, compiled: Callable[..., Any], recipe: list[tuple[str, Any]] | None) -> None:
        self.compiled, self.recipe = compiled, recipe

    def inputs(self, call: Sequence[torch.Tensor], fixed: list[Any]) -> list[Any]:
        assert self.recipe is not None
        out = list(fixed)
        for pos, (kind, what) in enumerate(self.recipe):
            if kind == "input":
                out[pos] = call[what]
            elif kind == "size":
                out[pos] = call[what[0]].shape[what[1]]
        return out


class DirectCompiled:
    """``torch.compile(fn, fullgraph=True, options=options)`` taking positional tensors named
    ``names``; calls at shapes Dynamo has accepted once skip it (see the module docstring)."""

    def __init__(
        self,
        fn: Callable[..., Any],
        names: Sequence[str],
        options: dict[str, Any],
        direct: bool,
        dynamic: Sequence[tuple[int, int]] = (),
    ) -> None:
        """``dynamic``: (input, dim) pairs marked dynamic for Dynamo (``mark_dynamic``), on the calls
        that go through it only: a direct call has no use for the marks, which cost ~17 us each."""
        self.names = list(names)
        self.direct = direct
        self.dynamic = tuple(dynamic)
        self._options = options
        # the graph the last call through Dynamo ran, with its inputs and outputs
        self._ran: tuple[_Graph, tuple[Any, ...], Any] | None = None
        self._shapes: dict[tuple[tuple[int, ...], ...], tuple[_Graph, list[Any]]] = {}
        self.direct_calls = 0  # calls that skipped Dynamo
        self._compiled = torch.compile(fn, fullgraph=True, dynamic=None, backend=self._backend)

    def __call__(self, *call: torch.Tensor) -> Any:
        key = tuple(tuple(t.shape) for t in call)
        known = self._shapes.get(key)
        if known is not None:
            graph, fixed = known
            self.direct_calls += 1
            return graph.compiled(*graph.inputs(call, fixed))[0]
        for i, dim in self.dynamic:
            torch._dynamo.mark_dynamic(call[i], dim)
        self._ran = None
        out = self._compiled(*call)
        if self.direct and self._ran is not None:
            self._learn(key, call, out, *self._ran)
        self._ran = None
        return out

    def _learn(
        self,
        key: tuple[tuple[int, ...], ...],
        call: Sequence[torch.Tensor],
        out: Any,
        graph: _Graph,
        args: tuple[Any, ...],
        result: Any,
    ) -> None:
        """Mark this shape direct if the graph's recipe rebuilds exactly the inputs Dynamo passed and
        the function returned the graph's one output as it is."""
        if graph.recipe is None:
            return
        if not (isinstance(result, (list, tuple)) and len(result) == 1 and result[0] is out):
            log.warning(
                "decode graph: it returns more than its graph's one output, every call goes through Dynamo"
            )
            graph.recipe = None
            return
        fixed = [a if kind == "fixed" else None for a, (kind, _) in zip(args, graph.recipe, strict=True)]
        ours = graph.inputs(call, fixed)
        same = all(
            (a is b) if isinstance(a, torch.Tensor) else (type(a) is type(b) and a == b)
            for a, b in zip(ours, args, strict=True)
        )
        if not same:
            log.warning("decode graph: its inputs differ from the recipe's, every call goes through Dynamo")
            graph.recipe = None
            return
        self._shapes[key] = (graph, fixed)

    def _backend(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        from torch._inductor.compile_fx import compile_fx

        # Inductor's function (compile_fx returns other things only when compiling ahead of time)
        compiled = cast(Callable[..., Any], compile_fx(gm, example_inputs, config_patches=self._options))
        graph = _Graph(compiled, self._recipe(gm))

        def run(*args: Any) -> Any:
            result = compiled(*args)
            self._ran = (graph, args, result)
            return result

        return run

    def _recipe(self, gm: torch.fx.GraphModule) -> list[tuple[str, Any]] | None:
        """Each placeholder as ("input", i), ("size", (i, dim)) or ("fixed", None); None if one is
        none of these (a source this module does not know, or a torch without sources)."""
        recipe: list[tuple[str, Any]] = []
        for node in gm.graph.find_nodes(op="placeholder"):
            source = getattr(node.meta.get("grapharg"), "source", None)
            name = getattr(source, "name", None)
            name = name() if callable(name) else name
            if not isinstance(name, str):
                return None
            if (m := _LOCAL.match(name)) and m[1] in self.names:
                recipe.append(("input", self.names.index(m[1])))
            elif (m := _SIZE.match(name)) and m[1] in self.names:
                recipe.append(("size", (self.names.index(m[1]), int(m[2]))))
            elif name.startswith(_SELF) and isinstance(node.meta.get("example_value"), torch.Tensor):
                recipe.append(("fixed", None))
            else:
                return None
        return recipe
