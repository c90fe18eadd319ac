"""Configuration dataclasses as command-line flags and environment variables.

A config is a frozen dataclass whose fields are declared with ``flag(default, help=...)``: the
field, its default and its help live in one place. ``parse_flags`` turns the fields into
``--kebab-case`` flags (bool fields become ``--x/--no-x``, ``Path`` fields are converted) and
builds the config once at the entry point. A field whose type is itself a flags dataclass (the
engine's ``EngineConfig``) is flattened: its fields become flags of the same command line, with
the defaults of the instance its ``default_factory`` builds (so a service can change a default of
the engine's, as the decode worker does for ``--compile-decode``).

Precedence: flag, then environment variable (``<PREFIX><FIELD>``, e.g. ``PREFILL_NUM_BLOCKS=64``;
an empty one leaves an optional field None), then the dataclass default. A value the config
rejects (its ``__post_init__`` raises ``ValueError``) is a usage error naming the problem.

``ServiceFlags`` holds the fields the three workers (encoder, prefill, decode) share.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import socket
import typing
from collections.abc import Sequence
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, TypeVar

from shared.assets import DEMO_MODEL_DIR

T = TypeVar("T")
DTYPES = ("auto", "bfloat16", "float32")
_TRUE = ("1", "true", "yes", "on")


def flag(default: Any = MISSING, *, help: str, default_factory: Any = MISSING) -> Any:  # noqa: A002
    """A config field that is also a flag: ``port: int = flag(5600, help="request port")``."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"help": help})


def check_device(device: str, dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device must be cpu or cuda[:N], got {device!r}")


@dataclass(frozen=True, kw_only=True)
class ServiceFlags:
    """What every worker service takes; each service's config adds its ports and limits."""

    model: Path = flag(DEMO_MODEL_DIR, help="checkpoint directory (default: the bundled demo model)")
    device: str = flag("cpu", help="cpu, cuda or cuda:N")
    dtype: str = flag("auto", help="auto (the checkpoint's), bfloat16 or float32")
    host: str = flag("127.0.0.1", help="interface to bind the sockets and the HTTP server to")
    send_timeout_s: float = flag(5.0, help="seconds a send may wait for a full peer queue")
    torch_threads: int = flag(0, help="torch intra-op threads (0: torch's default)")
    name: str = flag("", help="name used in errors and logs (default: the service's bound address)")
    ready_file: Path | None = flag(None, help="write a JSON file with the bound endpoints once serving")
    log_level: str = flag("INFO", help="DEBUG, INFO, WARNING or ERROR")
    otlp_traces_endpoint: str = flag(
        "", help="OTLP/HTTP traces URL, e.g. http://collector:4318/v1/traces (empty: no tracing)"
    )
    report_to: str = flag(
        "",
        help="comma-separated router inboxes (tcp://HOST:PORT) to register with and send load reports "
        "to; a HOST that resolves to several addresses (a headless Service) means each of them",
    )
    report_interval_s: float = flag(0.5, help="seconds between load reports (they are the heartbeat)")
    router_timeout_s: float = flag(
        5.0, help="a router heard from and then silent this long is gone: its requests are dropped"
    )
    advertise_host: str = flag(
        "",
        help="host name or IP routers and other workers reach this worker by, sent in load reports "
        "(default: --host; the machine's host name when --host is a wildcard such as 0.0.0.0)",
    )
    drain_timeout_s: float = flag(
        30.0, help="on SIGTERM: seconds to finish the requests held (admitting none) before exiting"
    )
    curve_keys: Path | None = flag(
        None,
        help="CurveZMQ key directory (`epd keys DIR`): every ZMQ socket encrypted and authenticated; "
        "without it the sockets are plain (loopback development)",
    )

    def __post_init__(self) -> None:
        check_device(self.device, self.dtype)
        if self.send_timeout_s <= 0 or self.torch_threads < 0:
            raise ValueError("send_timeout_s must be positive and torch_threads >= 0")
        if min(self.report_interval_s, self.router_timeout_s) <= 0 or self.drain_timeout_s < 0:
            raise ValueError("report_interval_s and router_timeout_s must be positive, drain_timeout_s >= 0")
        for target in self.report_addresses:
            if not re.fullmatch(r"tcp://[^\s:/]+:\d{1,5}", target):
                raise ValueError(f"report_to: {target!r} is not tcp://HOST:PORT")

    def address(self, port: int) -> str:
        return f"tcp://{self.host}:{port}"

    @property
    def report_addresses(self) -> list[str]:
        return [a.strip() for a in self.report_to.split(",") if a.strip()]

    @property
    def reachable_host(self) -> str:
        """The host others reach this worker by: --advertise-host, else the host name when bound to a
        wildcard, else --host."""
        return self.advertise_host or (
            socket.gethostname() if self.host in ("0.0.0.0", "::", "*") else self.host
        )

    def advertised(self, endpoint: str) -> str:
        """A bound endpoint as others reach it: a wildcard host becomes the advertised host."""
        return f"tcp://{self.reachable_host}:{endpoint.rsplit(':', 1)[1]}"


def parse_flags(cls: type[T], prog: str, description: str, env_prefix: str, argv: Sequence[str] | None) -> T:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    nested = _add_fields(parser, cls, env_prefix)
    args: dict[str, Any] = vars(parser.parse_args(argv))
    try:
        for name, sub in nested.items():
            args[name] = sub(**{f.name: args.pop(f.name) for f in dataclasses.fields(sub)})
        return cls(**args)
    except ValueError as e:
        parser.error(str(e))
        raise  # unreachable: parser.error exits


def _add_fields(
    parser: argparse.ArgumentParser, cls: type, env_prefix: str, defaults: Any = None
) -> dict[str, type]:
    """Add one flag per field of ``cls`` (defaults from the instance ``defaults`` when given);
    returns the flattened dataclass fields by name."""
    hints = typing.get_type_hints(cls)
    nested: dict[str, type] = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            nested[f.name] = tp
            base = f.default_factory() if f.default_factory is not MISSING else None
            _add_fields(parser, tp, env_prefix, base)
            continue
        if "help" not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with flag(..., help=...)")
        if defaults is not None:
            default = getattr(defaults, f.name)
        else:
            default = f.default_factory() if f.default_factory is not MISSING else f.default
        _add_flag(parser, f, tp, default, os.environ.get(env_prefix + f.name.upper()))
    return nested


def _add_flag(
    parser: argparse.ArgumentParser, f: dataclasses.Field, tp: Any, default: Any, env: str | None
) -> None:
    flag_name = "--" + f.name.replace("_", "-")
    kind = next((a for a in typing.get_args(tp) if a is not type(None)), tp)  # X | None -> X
    if kind is bool:
        value = default if env is None else env.lower() in _TRUE
        parser.add_argument(
            flag_name, action=argparse.BooleanOptionalAction, default=value, help=f.metadata["help"]
        )
        return
    required = default is MISSING and env is None
    if env == "" and type(None) in typing.get_args(tp):
        default = None  # an empty variable leaves an optional field unset (compose's ${X:+...})
    elif env is not None:
        try:
            default = kind(env)
        except ValueError:
            parser.error(f"environment variable for {flag_name}: {env!r} is not a valid {kind.__name__}")
    parser.add_argument(
        flag_name,
        type=kind,
        default=None if required else default,
        required=required,
        help=f.metadata["help"],
    )
