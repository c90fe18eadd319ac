"""Project-wide fixtures: tiny checkpoints in the published layout, built once per session."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from shared.checkpoint.tiny import cached_tiny_checkpoint

# Several services share two cores in the tests; every process sizes its own thread pool.
torch.set_num_threads(1)
# The decode worker and the colocated server compile the decode graph before serving by default
# (20-45 s on two cores). Services the tests start run eager unless a test asks for the graph (the
# parity tests and the bare-wheel test do), so that clusters start in seconds; children inherit these.
os.environ.setdefault("DECODE_COMPILE_DECODE", "0")
os.environ.setdefault("ROUTER_COMPILE_DECODE", "0")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``tiny_checkpoint(**spec_fields)``: the checkpoint folder, built once per session and spec."""
    root = tmp_path_factory.mktemp("tiny-checkpoints")
    return lambda **fields: cached_tiny_checkpoint(root, **fields)


@pytest.fixture(scope="session")
def bare_install(tmp_path_factory: pytest.TempPathFactory):
    """The wheel installed without extras in a fresh venv outside the checkout (tests/bare_install.py)."""
    from tests.bare_install import bare_install

    install = bare_install(tmp_path_factory.mktemp("bare-install"))
    print(f"\nbare install of {install.wheel.name}: {install.summary()}")
    return install


# Test tiers (markers declared in pyproject.toml): each test module says its tier in one line,
# `pytestmark = pytest.mark.unit` (or parity / cluster); tests/packaging/ is packaging by path.
TIERS = ("unit", "slow", "parity", "cluster", "packaging")
PACKAGING_TESTS = Path(__file__).parent / "packaging"


@pytest.hookimpl(tryfirst=True)  # before -m deselects anything
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wrong = []
    for item in items:
        own = any(m.name in TIERS for m in item.iter_markers())  # the import check says unit
        if item.path.is_relative_to(PACKAGING_TESTS) and not own:
            item.add_marker(pytest.mark.packaging)
        tiers = sorted({m.name for m in item.iter_markers() if m.name in TIERS})
        if len(tiers) != 1:
            wrong.append(f"  {item.nodeid}: {', '.join(tiers) or 'no tier'}")
    if wrong:
        raise pytest.UsageError(
            f"every test needs exactly one tier of {', '.join(TIERS)} "
            "(a `pytestmark = pytest.mark.<tier>` line in its module):\n" + "\n".join(wrong)
        )


def pytest_terminal_summary(terminalreporter) -> None:
    """The margin of every float comparison made with tests.numerics.assert_close_scaled."""
    from tests.numerics import summary_lines

    lines = summary_lines()
    if lines:
        terminalreporter.section("scaled float comparisons: worst max error / tolerance of each")
        for line in lines:
            terminalreporter.write_line(line)
