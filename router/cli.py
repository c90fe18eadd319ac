"""``epd``: the project's command line. ``epd up`` runs a whole local cluster on one machine.

    epd up [--model DIR] [--encoders N] [--prefills N] [--decodes N] [--port 8000] [--log-dir DIR]
    epd up --prefills 2 --decodes 2 --prefill-devices cuda:0,cuda:1 --decode-devices cuda:2,cuda:3
    epd up --colocated [--model DIR] [--device cuda] [--router-arg=--num-blocks=4096 ...]
    epd up --otlp-traces-endpoint http://127.0.0.1:4318/v1/traces --service-env decode-0:KEY=VALUE
    epd keys DIR && epd up --curve-keys DIR               (CurveZMQ on every inter-service socket)
    epd loadgen --base-url http://127.0.0.1:8000/v1 ...   (the load generator: shared/loadgen)
    epd make-tiny-checkpoint DIR ...                      (a tiny random checkpoint: shared/checkpoint)

It starts encoders, prefill and decode workers and the router as child processes
(``shared/supervisor.py``), waits until each is ready (the router: until it sees a ready worker
of every stage), prints the API URL, restarts any service that crashes, and stops them all on
Ctrl-C. Restarted services keep their ports only with a fixed ``--base-port`` (the default). The default
model is the bundled demo checkpoint (``shared.assets.DEMO_MODEL_DIR``, installed with the package).
``--device`` places every service; ``--encoder-devices``, ``--prefill-devices`` and
``--decode-devices`` place the workers of one kind, worker i on the list's element i mod its length.

With ``--colocated`` it starts only the router, which runs the whole model and one engine in its
own process (the baseline users would otherwise run); engine flags go in ``--router-arg``.

``epd keys DIR`` writes a CurveZMQ key set (``shared/wire/security.py``); ``epd up --curve-keys
DIR`` gives it to every service it starts, so that every ZMQ socket between them is encrypted and
admits only peers holding the keys.
"""

from __future__ import annotations

import argparse
import logging
import random
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from shared.assets import DEMO_MODEL_DIR
from shared.flags import check_device
from shared.supervisor import ServiceSpec, Supervisor
from shared.wire.security import MeshKeys, MeshKeysError, write_keys

STAGES = ("encoder", "prefill", "decode")


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _reserved_port(host: str) -> int:
    """A free port below the kernel's ephemeral range, for an address that must be chosen before
    the process that binds it starts: a port from the ephemeral range could meanwhile be handed to
    another service's ``--port 0`` bind (the router's inbox, which every worker reports to)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _free_port(host)
    candidates = list(range(10000, low))
    random.shuffle(candidates)
    for port in candidates[:200]:
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    return _free_port(host)


def device_list(text: str) -> tuple[str, ...]:
    """``cuda:0,cuda:1`` -> ("cuda:0", "cuda:1"), each checked as a service's ``--device`` would be."""
    devices = tuple(d.strip() for d in text.split(",") if d.strip())
    if not devices:
        raise argparse.ArgumentTypeError("expected devices separated by commas, such as cuda:0,cuda:1")
    for device in devices:
        try:
            check_device(device, "auto")
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from e
    return devices


def service_env(text: str) -> tuple[str, str, str]:
    """``prefill-0:KEY=VALUE`` -> ("prefill-0", "KEY", "VALUE")."""
    name, sep, assignment = text.partition(":")
    key, eq, value = assignment.partition("=")
    if not (sep and eq and name and key):
        raise argparse.ArgumentTypeError(f"expected SERVICE:KEY=VALUE (such as decode-0:KEY=1), got {text!r}")
    return name, key, value


def with_env(specs: list[ServiceSpec], assignments: list[tuple[str, str, str]]) -> list[ServiceSpec]:
    """``--service-env`` applied; a name that is no service here is an error."""
    names = {s.name for s in specs}
    if unknown := sorted({n for n, _, _ in assignments} - names):
        raise ValueError(
            f"--service-env names {', '.join(unknown)}; the services are {', '.join(sorted(names))}"
        )
    for name, key, value in assignments:
        next(s for s in specs if s.name == name).env[key] = value
    return specs


def worker_device(args: argparse.Namespace, stage: str, i: int) -> str:
    """Worker i of ``stage``: element i mod n of ``--<stage>-devices``, else ``--device``."""
    devices = getattr(args, f"{stage}_devices") or (args.device,)
    return devices[i % len(devices)]


def cluster_specs(args: argparse.Namespace, log_dir: Path) -> list[ServiceSpec]:
    """Encoders, prefill and decode workers, and the router that reads their ready files.

    Ports from ``--base-port`` B: encoder i B+i (HTTP B+1000+i), prefill i B+100+2i and B+101+2i
    (HTTP B+1100+i), decode i B+200+2i and B+201+2i (HTTP B+1200+i), the router's inbox B+300.
    B = 0: free ports everywhere (the router's HTTP port too, unless --port is given)."""
    common: tuple[str, ...] = (
        "--model",
        str(args.model),
        "--host",
        args.host,
        "--torch-threads",
        str(args.torch_threads),
    )
    common += ("--otlp-traces-endpoint", args.otlp_traces_endpoint) if args.otlp_traces_endpoint else ()
    keys = ("--curve-keys", str(args.curve_keys)) if args.curve_keys else ()
    common += keys
    b = args.base_port

    def placed(stage: str, i: int) -> tuple[str, ...]:
        return (*common, "--device", worker_device(args, stage, i), "--dtype", args.dtype)

    def port(offset: int) -> str:
        return "0" if b == 0 else str(b + offset)

    inbox = _reserved_port(args.host) if b == 0 else b + 300
    report = ("--report-to", f"tcp://{args.host}:{inbox}")  # every worker registers and reports load
    specs = []
    for i in range(args.encoders):
        flags: tuple[str, ...] = ("--port", port(i), "--http-port", port(1000 + i), *report)
        encoder = (*placed("encoder", i), *flags, *args.encoder_arg)
        specs.append(ServiceSpec(f"encoder-{i}", "services.encoder", encoder))
    for i in range(args.prefills):
        flags = (
            "--port",
            port(100 + 2 * i),
            "--inbox-port",
            port(101 + 2 * i),
            "--http-port",
            port(1100 + i),
            *report,
        )
        prefill = (*placed("prefill", i), *flags, "--kv-transfer", args.kv_transfer, *args.prefill_arg)
        specs.append(ServiceSpec(f"prefill-{i}", "services.prefill", prefill))
    for i in range(args.decodes):
        flags = ("--port", port(200 + 2 * i), "--kv-port", port(201 + 2 * i), "--http-port", port(1200 + i))
        kv = ("--kv-transfer", args.kv_transfer)
        decode = (*placed("decode", i), *flags, *report, *kv, *args.decode_arg)
        specs.append(ServiceSpec(f"decode-{i}", "services.decode", decode))
    ready = [str(log_dir / f"{s.name}.ready.json") for s in specs]
    router = (
        "--model", str(args.model), "--host", args.http_host, "--port", str(_http_port(args)),
        "--inbox-host", args.host, "--inbox-port", str(inbox),
        "--encoders", ",".join(r for r in ready if "encoder-" in r),
        "--prefills", ",".join(r for r in ready if "prefill-" in r),
        *(("--otlp-traces-endpoint", args.otlp_traces_endpoint) if args.otlp_traces_endpoint else ()),
        *keys, *args.router_arg,
    )  # fmt: skip
    specs.append(ServiceSpec("router", "router", router))
    return specs


def colocated_specs(args: argparse.Namespace) -> list[ServiceSpec]:
    """Only the router, running the whole model and one engine itself."""
    router = (
        "--model", str(args.model), "--host", args.http_host, "--port", str(_http_port(args)), "--colocated",
        "--device", args.device, "--dtype", args.dtype, "--torch-threads", str(args.torch_threads),
        *(("--otlp-traces-endpoint", args.otlp_traces_endpoint) if args.otlp_traces_endpoint else ()),
        *args.router_arg,
    )  # fmt: skip
    return [ServiceSpec("router", "router", router)]


def _http_port(args: argparse.Namespace) -> int:
    return args.port if args.port is not None else (0 if args.base_port == 0 else 8000)


def up(args: argparse.Namespace) -> int:
    if not (args.model / "config.json").exists():
        print(
            f"epd up: {args.model} is not a checkpoint directory (no config.json). "
            "Give --model, or build a tiny random one: epd make-tiny-checkpoint DIR",
            file=sys.stderr,
        )
        return 2
    if args.curve_keys:
        try:  # fail here, not in every service
            MeshKeys.load(args.curve_keys)
        except MeshKeysError as e:
            print(f"epd up: --curve-keys: {e}", file=sys.stderr)
            return 2
        args.curve_keys = args.curve_keys.resolve()
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="epd-"))
    specs = colocated_specs(args) if args.colocated else cluster_specs(args, log_dir)
    try:
        specs = with_env(specs, args.service_env)
    except ValueError as e:
        print(f"epd up: {e}", file=sys.stderr)
        return 2
    supervisor = Supervisor(specs, log_dir)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        ready = supervisor.start(timeout=args.start_timeout)
        for name, info in ready.items():
            print(f"{name:12s} {info.get('zmq', info.get('kv', ''))}  {info.get('http', '')}", flush=True)
        print(f"OpenAI API at {ready['router']['http']}/v1", flush=True)
        print(f"cluster ready (logs in {log_dir}); Ctrl-C stops it", flush=True)
        supervisor.watch(stop)
    except RuntimeError as e:
        print(f"epd up: {e}", file=sys.stderr)
        return 1
    finally:
        supervisor.stop()
    print("cluster stopped", flush=True)
    return 0


def keys(args: argparse.Namespace) -> int:
    try:
        mesh = write_keys(args.dir)
    except MeshKeysError as e:
        print(f"epd keys: {e}", file=sys.stderr)
        return 1
    print(f"CurveZMQ key set in {args.dir}: server.key, client.key (public), *.key_secret (0600)")
    print(f"server public key {mesh.server_public.decode()}, client public key {mesh.client_public.decode()}")
    print(f"every service: --curve-keys {args.dir} (or <SERVICE>_CURVE_KEYS); epd up --curve-keys {args.dir}")
    return 0


def _loadgen(argv: list[str]) -> int:
    from shared.loadgen.cli import main as loadgen_main  # imported on use

    return loadgen_main(argv)


def _tiny(argv: list[str]) -> int:
    from shared.checkpoint.tiny import main as tiny_main

    return tiny_main(argv)


# Subcommands that own their whole command line (``epd loadgen --help`` is the load generator's).
DELEGATED: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "loadgen": (
        _loadgen,
        "load-test an OpenAI-compatible endpoint (plots, progress bar: pip install 'epd-serve[loadgen]')",
    ),
    "make-tiny-checkpoint": (_tiny, "write a tiny random Qwen3-VL-MoE checkpoint in the published layout"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="epd", description="disaggregated Qwen3-VL-MoE serving")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("up", help="start a local cluster and keep it running until Ctrl-C")
    k = sub.add_parser("keys", help="write a CurveZMQ key set for --curve-keys (secret files 0600)")
    k.add_argument("dir", type=Path, help="directory to create (existing keys are not overwritten)")
    for name, (_, text) in DELEGATED.items():
        sub.add_parser(name, help=text, add_help=False)
    p.add_argument(
        "--model", type=Path, default=DEMO_MODEL_DIR, help="checkpoint directory (default: the bundled demo)"
    )
    p.add_argument(
        "--colocated",
        action="store_true",
        help="one process: the router runs the whole model (no encoders, prefill or decode workers)",
    )
    p.add_argument("--encoders", type=int, default=1)
    p.add_argument("--prefills", type=int, default=1)
    p.add_argument("--decodes", type=int, default=1)
    p.add_argument(
        "--port", type=int, default=None, help="router HTTP port (default 8000; 0 with --base-port 0)"
    )
    p.add_argument("--http-host", default="127.0.0.1", help="interface the router's HTTP API listens on")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N for every service")
    for stage in STAGES:
        p.add_argument(
            f"--{stage}-devices",
            type=device_list,
            default=None,
            help=f"devices of the {stage} workers, such as cuda:0,cuda:1: {stage} i gets element "
            "i mod the list's length (default: --device)",
        )
    p.add_argument("--dtype", default="auto")
    p.add_argument(
        "--kv-transfer",
        default="zmq",
        choices=("zmq", "mooncake"),
        help="how prefill workers hand KV to decode workers (mooncake: the mooncake extra and `make deps`)",
    )
    for stage in ("encoder", "prefill", "decode", "router"):
        p.add_argument(
            f"--{stage}-arg", action="append", default=[], help=f"extra flag for every {stage} (repeatable)"
        )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument(
        "--base-port",
        type=int,
        default=5600,
        help="encoder i listens on base+i, HTTP on base+1000+i; 0: free ports",
    )
    p.add_argument("--torch-threads", type=int, default=1, help="torch threads per service process")
    p.add_argument(
        "--otlp-traces-endpoint",
        default="",
        help="OTLP/HTTP traces URL every service exports to, e.g. http://127.0.0.1:4318/v1/traces "
        "(the tracing extra; empty: no traces)",
    )
    p.add_argument(
        "--service-env",
        type=service_env,
        action="append",
        default=[],
        metavar="SERVICE:KEY=VALUE",
        help="an environment variable of one service, e.g. decode-0:CUDA_VISIBLE_DEVICES=1 (repeatable)",
    )
    p.add_argument(
        "--curve-keys",
        type=Path,
        default=None,
        help="CurveZMQ key directory (epd keys DIR) given to every service: encrypted, authenticated ZMQ",
    )
    p.add_argument("--log-dir", type=Path, default=None)
    p.add_argument("--start-timeout", type=float, default=300.0)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DELEGATED:
        return DELEGATED[argv[0]][0](argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "keys":
        return keys(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if min(args.encoders, args.prefills, args.decodes) < 1:
        parser.error("--encoders, --prefills and --decodes must be >= 1")
    if args.colocated and any(getattr(args, f"{stage}_devices") for stage in STAGES):
        parser.error("--colocated runs one process: place it with --device")
    return up(args)


if __name__ == "__main__":
    raise SystemExit(main())
