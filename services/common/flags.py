"""A frozen config dataclass from command-line flags and environment variables.

Precedence: flag, then environment variable (``<PREFIX><FIELD>``, e.g. ``PREFILL_NUM_BLOCKS=64``),
then the dataclass default. bool fields become ``--x/--no-x``; ``Path`` fields are converted.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
_KINDS = {"int": int, "float": float, "bool": bool}


def parse_flags(
    cls: type[T],
    prog: str,
    description: str,
    env_prefix: str,
    help: Mapping[str, str],
    argv: Sequence[str] | None,
) -> T:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for f in fields(cls):  # type: ignore[arg-type]
        flag = "--" + f.name.replace("_", "-")
        env = os.environ.get(env_prefix + f.name.upper())
        type_name = str(f.type).replace(" | None", "")
        if type_name == "bool":
            default = f.default if env is None else env.lower() in ("1", "true", "yes", "on")
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=help[f.name]
            )
            continue
        kind = _KINDS.get(type_name, str)
        required = f.default is MISSING and env is None
        default = None if required else (kind(env) if env is not None else f.default)
        parser.add_argument(flag, type=kind, default=default, required=required, help=help[f.name])
    args: dict[str, Any] = vars(parser.parse_args(argv))
    for f in fields(cls):  # type: ignore[arg-type]
        if "Path" in str(f.type) and args[f.name]:
            args[f.name] = Path(args[f.name])
    try:
        return cls(**args)
    except ValueError as e:
        parser.error(str(e))
        raise  # unreachable: parser.error exits
