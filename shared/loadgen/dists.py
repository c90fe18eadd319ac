"""Small discrete distributions parsed from command-line specs, for the workload's knobs.

Spec forms (the value parser decides what one value is: an int, or a ``WxH`` size):

    "V"                 always V
    "A-B"               uniform integer in [A, B] (integer knobs only)
    "V1,V2,V3"          uniform choice
    "V1:w1,V2:w2"       weighted choice; weights need not sum to 1
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Dist:
    """A weighted choice among ``values``, or a uniform integer range when ``span`` is set."""

    values: tuple[Any, ...] = ()
    weights: tuple[float, ...] = ()
    span: tuple[int, int] | None = None

    def sample(self, rng: np.random.Generator) -> Any:
        if self.span is not None:
            return int(rng.integers(self.span[0], self.span[1] + 1))
        if len(self.values) == 1:
            return self.values[0]
        return self.values[int(rng.choice(len(self.values), p=np.asarray(self.weights)))]

    @property
    def mean(self) -> float:
        """Mean of a numeric distribution (sizes: mean pixel count)."""
        if self.span is not None:
            return (self.span[0] + self.span[1]) / 2
        nums = [v[0] * v[1] if isinstance(v, tuple) else v for v in self.values]
        return float(np.dot(nums, self.weights))


def parse_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"negative value {text!r}")
    return value


def parse_size(text: str) -> tuple[int, int]:
    """``"224x224"`` -> (width, height)."""
    w, sep, h = text.lower().partition("x")
    if not sep or int(w) < 1 or int(h) < 1:
        raise ValueError(f"size {text!r} is not WIDTHxHEIGHT")
    return int(w), int(h)


def parse_dist(spec: str | int, parse_value: Callable[[str], Any] = parse_int) -> Dist:
    """A ``Dist`` from one of the spec forms in the module docstring; ValueError when malformed."""
    text = str(spec).replace(" ", "")
    if not text:
        raise ValueError("empty distribution spec")
    if "-" in text and "," not in text and ":" not in text and parse_value is parse_int:
        lo, hi = (parse_int(p) for p in text.split("-", 1))
        if lo > hi:
            raise ValueError(f"range {text!r} is empty")
        return Dist(span=(lo, hi))
    values, weights = [], []
    for item in text.split(","):
        value, _, weight = item.partition(":")
        values.append(parse_value(value))
        weights.append(float(weight) if weight else 1.0)
    if min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"weights in {text!r} must be >= 0 and not all 0")
    total = sum(weights)
    return Dist(tuple(values), tuple(w / total for w in weights))
