"""Every docker-compose.yml service that runs on a GPU reserves one (resolved by the real compose binary)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.repo import REPO_ROOT
from tests.router.test_compose import compose_binary

pytestmark = pytest.mark.unit


def all_services(**env: str) -> dict[str, dict]:
    """Every service, the ``gpu`` profile's too, as compose resolves them."""
    out = subprocess.run(
        [str(compose_binary()), "-f", "docker-compose.yml", "--profile", "gpu", "config", "--format", "json"],
        cwd=REPO_ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return json.loads(out.stdout)["services"]


def device(service: dict) -> str | None:
    cmd = service["command"]
    return cmd[cmd.index("--device") + 1] if "--device" in cmd else None


def gpus(service: dict) -> list[dict]:
    reserved = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return [d for d in reserved if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]


def test_every_cuda_service_reserves_a_gpu():
    services = all_services()
    on_gpu = {name for name, s in services.items() if (device(s) or "").startswith("cuda")}
    assert on_gpu, "the gpu profile runs a service on CUDA"
    for name, s in services.items():
        if name in on_gpu:
            assert len(gpus(s)) == 1, f"{name} runs on {device(s)} without a GPU reserved"
        else:
            assert not gpus(s), f"{name} reserves a GPU it does not use"


def test_the_gpu_decode_worker_takes_the_gpu_it_is_given():
    reserved = gpus(all_services(EPD_DECODE_GPU="3")["decode-gpu"])
    assert reserved[0]["device_ids"] == ["3"]
