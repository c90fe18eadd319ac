"""Optional features and the extras that install them: ``require(module, extra=..., feature=...)``.

A runtime module imports an optional dependency only through ``require``, at the point where the
feature is used (or at the top of a module that only that feature imports), so that a bare
install (``pip install epd-serve``, no extras) runs everything else:

    plt = require("matplotlib.pyplot", extra="loadgen", feature="epd loadgen --plots")

Missing, it raises ``MissingExtra`` (an ``ImportError``) whose message names the command that
installs the extra. The dependency check of the test suite (tests/packaging/test_dependencies.py)
reads these calls: each module required must belong to a distribution of the named extra.

Extras (``[project.optional-dependencies]`` in pyproject.toml): ``loadgen`` (matplotlib for the
load generator's plots, tqdm for its progress bar); ``mooncake`` (Mooncake's Transfer Engine for
``--kv-transfer mooncake``; it also needs the Debian libraries of ``make deps``); ``tracing``
(the OpenTelemetry SDK and OTLP exporter for ``--otlp-traces-endpoint``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from shared.about import DISTRIBUTION


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message says which extra installs it."""

    def __init__(self, module: str, extra: str, feature: str | None = None) -> None:
        what = feature or f"this feature ({module})"
        super().__init__(
            f"{what} needs {module.split('.')[0]}, which is not installed: "
            f"pip install '{DISTRIBUTION}[{extra}]'",
            name=module,
        )
        self.module, self.extra, self.feature = module, extra, feature


def require(module: str, *, extra: str, feature: str | None = None) -> ModuleType:
    """``importlib.import_module(module)``, or ``MissingExtra`` naming ``extra`` when it is absent.

    Only a missing ``module`` (or one of its parent packages) becomes ``MissingExtra``; an
    ``ImportError`` raised from inside an installed module propagates as it is."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        parts = module.split(".")
        if e.name is None or e.name not in {".".join(parts[: i + 1]) for i in range(len(parts))}:
            raise
        raise MissingExtra(module, extra, feature) from e
