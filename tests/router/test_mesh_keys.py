"""A cluster started with ``epd keys`` + ``epd up --curve-keys``: greedy answers still equal
transformers', and on every ZMQ port the services bound (their ready files) a rogue peer without
the keys (none, a wrong server key, an unauthorised client key) submits a valid message that is
never accepted and reads nothing back; the services' counters and logs show nothing accepted,
their refusal counters show the unauthorised key turned away, and the cluster answers afterwards."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import torch
import zmq

from shared.engine import SamplingParams, SequenceState
from shared.transfer import reservation
from shared.wire import EncodeRequest, ImageEmbeddingResult, ImageInput, Stage, encode
from shared.wire.messages import (
    AbortRequest,
    ImagePlacement,
    LoadReport,
    MRopeSegment,
    PrefillRequest,
    RouterHeartbeat,
    Sampling,
    SequenceTokens,
    TokenBatch,
)
from shared.wire.security import MeshKeys
from tests.cluster import EpdCluster, start_cluster
from tests.router.parity import assert_greedy_matches_transformers

pytestmark = pytest.mark.cluster

H = "e" * 64
ROGUE_ADDRESS = "tcp://10.99.99.99:5999"  # no service ever names this: a log line with it is a leak
ROGUES = ("no keys", "wrong server key", "unauthorised client key")
WORKERS = ("encoder-0", "prefill-0", "decode-0")
QUIET_S = 3.0
# Counters that move when a service accepts anything a rogue could send.
ACCEPTED = {
    "encoder-0": ("encoder_requests_total", "encoder_images_total", "encoder_errors_total"),
    "prefill-0": ("prefill_requests_total", "prefill_errors_total", "prefill_orphan_bytes"),
    "decode-0": ("decode_errors_total", "decode_refusals_total", "decode_pending_reservations"),
    "router": ("router_errors_total", "router_aborts_total"),
}


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mesh") / "keys"
    subprocess.run([sys.executable, "-m", "router.cli", "keys", str(path)], check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def cluster(ckpt: Path, keys_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EpdCluster]:
    with start_cluster(
        ckpt, tmp_path_factory.mktemp("epd-keys"), "--curve-keys", str(keys_dir),
        "--dtype", "float32", "--router-arg=--max-model-len=4096",
        "--router-arg=--heartbeat-timeout-s=15",
    ) as c:  # fmt: skip
        yield c


@pytest.fixture(scope="module")
def client(cluster: EpdCluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=cluster.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def metrics(cluster: EpdCluster, service: str) -> dict[str, float]:
    """Every sample of the service's /metrics summed by metric name (labels folded)."""
    base = cluster.url if service == "router" else cluster.ready(service)["http"]
    with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
        body = resp.read().decode()
    out: dict[str, float] = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, value = line.split("{")[0].split(" ")[0], float(line.rsplit(" ", 1)[1])
            out[name] = out.get(name, 0.0) + value
    return out


def valid_messages(service: str, port: str, cluster: EpdCluster) -> list:
    """What the socket behind ``port`` accepts from a legitimate peer, well formed."""
    deadline = time.time() + 30
    sampling = Sampling(0.0, 1.0, 0, 0.0, None, 4, [], False, None)
    match service, port:
        case "encoder-0", "zmq":
            return [EncodeRequest("rogue-enc", [ImageInput(0, H, b"\x89PNG")], ROGUE_ADDRESS, deadline)]
        case "prefill-0", "zmq":
            return [
                PrefillRequest(
                    "rogue-pre",
                    list(range(10)),
                    [
                        MRopeSegment(0, 2, 0, None),
                        MRopeSegment(2, 6, 2, (1, 2, 3)),
                        MRopeSegment(8, 2, 5, None),
                    ],
                    3,
                    [ImagePlacement(0, H, 2, 6)],
                    sampling,
                    ROGUE_ADDRESS,
                    cluster.ready("decode-0")["kv"],
                    deadline,
                )  # fmt: skip
            ]
        case "prefill-0", "inbox":
            embeds = torch.randn(6, 8).bfloat16()
            return [
                ImageEmbeddingResult("rogue-pre", 0, H, (1, 4, 6), embeds, torch.randn(3, 6, 8).bfloat16())
            ]
        case "decode-0", "kv":
            state = SequenceState("rogue-kv", [5, 6, 7, 8], 3, 0, SamplingParams())
            return [reservation(state, 2, ROGUE_ADDRESS, deadline, "rogue@" + ROGUE_ADDRESS, None)]
        case "decode-0", "control":
            return [AbortRequest("rogue-abort", "rogue"), RouterHeartbeat(ROGUE_ADDRESS, time.time())]
        case "router", "inbox":
            return [
                LoadReport("rogue-worker", Stage.ENCODER, ROGUE_ADDRESS),
                TokenBatch("rogue", [SequenceTokens("rogue-tokens", [5])]),
            ]
    raise AssertionError(f"no messages for {service} {port}")


def zmq_ports(cluster: EpdCluster) -> list[tuple[str, str, str]]:
    """(service, name, address) of every ZMQ address in the ready files."""
    ports = []
    for path in sorted(cluster.log_dir.glob("*.ready.json")):
        service = path.name.removesuffix(".ready.json")
        ports += [(service, k, v) for k, v in cluster.ready(service).items() if str(v).startswith("tcp://")]
    return ports


def rogue_socket(ctx: zmq.Context, kind: int, rogue: str, keys: MeshKeys) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.linger = 0
    if rogue != "no keys":
        sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
        sock.curve_serverkey = zmq.curve_keypair()[0] if rogue == "wrong server key" else keys.server_public
    return sock


@pytest.mark.parametrize("n_images", [0, 1, 2])
def test_greedy_parity_with_keys(cluster, client, ckpt, hf, n_images):
    assert_greedy_matches_transformers(client, cluster.model, ckpt, hf, n_images)


def test_rogue_peers_get_nothing_through_any_port(cluster, client, keys_dir):
    keys = MeshKeys.load(keys_dir)
    ports = zmq_ports(cluster)
    assert {(s, k) for s, k, _ in ports} == {
        ("encoder-0", "zmq"), ("prefill-0", "zmq"), ("prefill-0", "inbox"),
        ("decode-0", "kv"), ("decode-0", "control"), ("router", "inbox"),
    }  # fmt: skip
    services = (*WORKERS, "router")
    before = {s: metrics(cluster, s) for s in services}
    assert all(b.get(f"{s.split('-')[0]}_curve_refused_connections") == 0 for s, b in before.items())
    ctx = zmq.Context()
    readers = []
    try:
        for service, port, address in ports:
            msgs = [encode(m) for m in valid_messages(service, port, cluster)]
            # a DEALER pairs with the ROUTER ports and reads any answer, a PUSH with the PULL ones
            for rogue in ROGUES:
                for kind in (zmq.DEALER, zmq.PUSH):
                    sock = rogue_socket(ctx, kind, rogue, keys)
                    sock.connect(address)
                    readers.append(sock)
                    for frames in msgs:
                        sock.send_multipart(frames, zmq.NOBLOCK)
        time.sleep(QUIET_S)  # handshakes on loopback take milliseconds
        read = [s for s in readers if s.type == zmq.DEALER and s.poll(0)]
        assert not read, "a rogue read an answer"
    finally:
        ctx.destroy(linger=0)
    after = {s: metrics(cluster, s) for s in services}
    for service in services:
        for name in ACCEPTED[service]:
            assert after[service].get(name, 0) == before[service].get(name, 0), (service, name)
        # every service met the unauthorised key (the server key was right) and refused it
        assert after[service][f"{service.split('-')[0]}_curve_refused_connections"] >= 1, service
    logs = "\n".join(p.read_text(errors="replace") for p in cluster.log_dir.glob("*.log"))
    assert "rogue" not in logs and ROGUE_ADDRESS.removeprefix("tcp://") not in logs
    assert logs.count("refused a CurveZMQ client with an unauthorised key") >= len(services)
    # still serving
    out = client.chat.completions.create(
        model=cluster.model, messages=[{"role": "user", "content": "Say hi"}], max_tokens=4, temperature=0
    )
    assert out.usage.completion_tokens >= 1
