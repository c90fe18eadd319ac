"""Float comparisons whose result depends on the order of a reduction, and a record of each one.

An fp32 sum computed in another order (another batch composition, chunking or packing, another
implementation, or the same code on a CPU whose GEMM kernels block the work differently) differs
in its last bits, and that difference grows with the magnitude of what is summed. So the tolerance
is scaled to the magnitude of the expected values, ``rel * max|expected| + floor``, rather than a
fixed absolute number that holds on one CPU only. Comparisons that are order-independent (a copy,
a codec round trip, the same computation on the same shapes) stay bitwise, with ``torch.equal``.

Every comparison is recorded; tests/conftest.py prints, at the end of the session, the worst
observed error over its tolerance for each, so a run shows how much margin each one has.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

# Float32 round-off of sums of a few hundred terms in another order: ~sqrt(K) * 2**-24 * max|x| is
# ~1e-6 of the magnitude; 1e-5 leaves an order of magnitude of margin and still catches any real
# error (a wrong mask, position, row or expert is off by a large fraction of the magnitude).
REL_FP32 = 1e-5
# Below this, an expected tensor of (near) zeros is compared absolutely.
FLOOR = 1e-12


@dataclass(frozen=True)
class Comparison:
    test: str
    name: str
    max_error: float
    tolerance: float

    @property
    def ratio(self) -> float:
        return self.max_error / self.tolerance


RECORDS: list[Comparison] = []


def _current_test() -> str:
    # "tests/x/test_y.py::test_z[param] (call)" while a test runs
    return os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]


def assert_close_scaled(
    actual: torch.Tensor, expected: torch.Tensor, rel: float = REL_FP32, name: str = "", floor: float = FLOOR
) -> Comparison:
    """Assert ``max|actual - expected| <= rel * max|expected| + floor`` (and equal shapes, dtypes,
    finite values); record the observed error and the tolerance under the running test's id."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert torch.isfinite(a).all() and torch.isfinite(e).all(), f"{name}: non-finite values"
    error = float((a - e).abs().max()) if e.numel() else 0.0
    magnitude = float(e.abs().max()) if e.numel() else 0.0
    tolerance = rel * magnitude + floor
    record = Comparison(_current_test(), name, error, tolerance)
    RECORDS.append(record)
    assert error <= tolerance, (
        f"{name}: max |actual - expected| = {error:.3e} > {tolerance:.3e} "
        f"= {rel:g} * max|expected| ({magnitude:.3e}) + {floor:g}"
    )
    return record


def summary_lines() -> list[str]:
    """One line per (test, comparison name): how many were made, the worst error and its tolerance."""
    worst: dict[tuple[str, str], tuple[Comparison, int]] = {}
    for r in RECORDS:
        key = (r.test, r.name)
        prev, n = worst.get(key, (r, 0))
        worst[key] = (r if r.ratio >= prev.ratio else prev, n + 1)
    if not worst:
        return []
    lines = [f"{'max error':>10} {'tolerance':>10} {'ratio':>7} {'n':>4}  test :: comparison"]
    for (test, name), (r, n) in sorted(worst.items(), key=lambda kv: -kv[1][0].ratio):
        lines.append(f"{r.max_error:10.3e} {r.tolerance:10.3e} {r.ratio:7.3f} {n:4d}  {test} :: {name}")
    return lines
