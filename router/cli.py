"""``epd``: the project's command line. ``epd up`` runs a whole local cluster on one machine.

    epd up [--model DIR] [--encoders N] [--torch-threads N] [--log-dir DIR]

It starts the services as child processes (``shared/supervisor.py``), waits until each is
ready, prints their endpoints, restarts any that crash, and stops them all on Ctrl-C. The default
model is the bundled demo checkpoint in ``models/demo``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import threading
from pathlib import Path

from shared.supervisor import REPO_ROOT, ServiceSpec, Supervisor

DEMO_MODEL = REPO_ROOT / "models" / "demo"


def cluster_specs(args: argparse.Namespace) -> list[ServiceSpec]:
    common = ("--model", str(args.model), "--host", args.host, "--torch-threads", str(args.torch_threads))
    specs = []
    for i in range(args.encoders):
        # --base-port 0 lets every service pick free ports (tests, several clusters on one host).
        port, http = (0, 0) if args.base_port == 0 else (args.base_port + i, args.base_port + 1000 + i)
        specs.append(
            ServiceSpec(
                f"encoder-{i}", "services.encoder", (*common, "--port", str(port), "--http-port", str(http))
            )
        )
    return specs


def up(args: argparse.Namespace) -> int:
    if not (args.model / "config.json").exists():
        print(
            f"epd up: {args.model} is not a checkpoint directory (no config.json). "
            "Give --model, or build a test checkpoint: python -m tools.make_tiny_checkpoint DIR",
            file=sys.stderr,
        )
        return 2
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="epd-"))
    supervisor = Supervisor(cluster_specs(args), log_dir)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        ready = supervisor.start(timeout=args.start_timeout)
        for name, info in ready.items():
            print(f"{name:12s} {info.get('zmq', '')}  {info.get('http', '')}", flush=True)
        print(f"cluster ready (logs in {log_dir}); Ctrl-C stops it", flush=True)
        supervisor.watch(stop)
    except RuntimeError as e:
        print(f"epd up: {e}", file=sys.stderr)
        return 1
    finally:
        supervisor.stop()
    print("cluster stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="epd", description="disaggregated Qwen3-VL-MoE serving")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("up", help="start a local cluster and keep it running until Ctrl-C")
    p.add_argument("--model", type=Path, default=DEMO_MODEL, help="checkpoint directory (default: demo)")
    p.add_argument("--encoders", type=int, default=1)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument(
        "--base-port",
        type=int,
        default=5600,
        help="encoder i listens on base+i, HTTP on base+1000+i; 0: free ports",
    )
    p.add_argument("--torch-threads", type=int, default=1, help="torch threads per service process")
    p.add_argument("--log-dir", type=Path, default=None)
    p.add_argument("--start-timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.encoders < 1:
        parser.error("--encoders must be >= 1")
    return up(args)


if __name__ == "__main__":
    raise SystemExit(main())
