"""Ready files: how a service tells whoever started it that it serves, and where.

A service writes one JSON object (its bound endpoints by name, ``http``, and its ``pid``) once it
serves; the supervisor (``epd up``), the router (worker lists given as ready-file paths), tests
and benchmarks read it. The write is atomic, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_ready_file(path: Path | None, info: dict[str, Any]) -> None:
    if path is None:
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**info, "pid": os.getpid()}))
    tmp.replace(path)


def read_ready_file(path: Path) -> dict[str, Any] | None:
    """The file's contents, or None while it is absent or unreadable."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None
