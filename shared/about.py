"""Which epd-serve a process runs: ``banner(package)`` -> ``"epd-serve 0.1.0 (/…/site-packages/router)"``.

Every service and the router log it first thing at startup, so a log says where the code was
loaded from: an installed wheel (a ``site-packages`` folder) or a source checkout.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

DISTRIBUTION = "epd-serve"


def banner(package: str) -> str:
    try:
        v = version(DISTRIBUTION)
    except PackageNotFoundError:
        v = "(not installed)"
    module = importlib.import_module(package)
    where = Path(module.__file__ or ".").resolve().parent
    return f"{DISTRIBUTION} {v} ({where})"
