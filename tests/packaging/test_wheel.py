"""The wheel, and ``epd up`` served from a bare install of it (tests/bare_install.py: declared
dependencies only, no extras, a fresh venv outside the checkout).

The cluster runs with the venv's Python in isolated mode (``-I``: no ``PYTHONPATH``, no working
directory on ``sys.path``) from a working directory outside the checkout, with no ``--model``
(the demo model installed as package data). Every service logs where its code was loaded from
(``shared/about.py``): that must be the venv. The official openai client asks about a picture of a
red circle; Ctrl-C then stops every process and ``epd`` exits 0.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from tests.bare_install import BareInstall
from tests.cluster import start_cluster, wait_for
from tests.demo_pictures import ask_red_circle
from tests.repo import REPO_ROOT

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(1200)]

RUNTIME_PACKAGES = ("router", "services", "shared")
SERVICES = ("encoder-0", "prefill-0", "decode-0", "router")
DEMO_FILES = (
    "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
    "vocab.json", "merges.txt", "chat_template.jinja", "preprocessor_config.json", "README.md",
)  # fmt: skip
# Development-only things that must not ship: the top-level tools/bench/tests/docs folders, the
# demo model's training code, the Locust file, tests and their fixtures.
NOT_SHIPPED = re.compile(
    r"^(tools|bench|tests|docs|docker)/|train_demo|demo_data|locustfile|conftest|(^|/)test_"
)


def summarize(names: list[str]) -> str:
    """A compact listing: modules per top-level folder, then every file that is not a module."""
    tops: dict[str, int] = {}
    for n in names:
        if n.endswith(".py"):
            tops[n.split("/")[0]] = tops.get(n.split("/")[0], 0) + 1
    data = [n for n in names if not n.endswith(".py")]
    return "\n".join([*(f"  {t}/: {k} modules" for t, k in sorted(tops.items())), *(f"  {n}" for n in data)])


def test_wheel_holds_the_runtime_packages_and_their_data(bare_install: BareInstall) -> None:
    with zipfile.ZipFile(bare_install.wheel) as whl:
        infos = {i.filename: i for i in whl.infolist() if not i.is_dir()}
        entry_points = whl.read(next(n for n in infos if n.endswith(".dist-info/entry_points.txt"))).decode()
    names = sorted(infos)
    print(f"\n{bare_install.wheel.name} ({bare_install.summary()}):\n{summarize(names)}")
    dist_info = next(n for n in names if n.endswith(".dist-info/METADATA")).split("/")[0]
    assert {n.split("/")[0] for n in names} == {*RUNTIME_PACKAGES, dist_info}
    assert not [n for n in names if NOT_SHIPPED.search(n)]
    # Every file of the runtime packages the wheel was built from, modules and data alike, and
    # nothing else (no module left over from an earlier build).
    src = bare_install.src
    source = {
        p.relative_to(src).as_posix(): p.stat().st_size
        for package in RUNTIME_PACKAGES
        for p in (src / package).rglob("*")
        if p.is_file()
    }
    shipped = {n: i.file_size for n, i in infos.items() if not n.startswith(dist_info)}
    assert shipped == source
    assert "shared/multimodal/chat_template.jinja" in shipped
    native = {f"shared/engine/native/{f}" for f in ("paged_decode.c", "routed_experts.c", "common.h")}
    assert native <= set(shipped)
    assert {f"shared/assets/demo/{f}" for f in DEMO_FILES} <= set(shipped)
    assert re.search(r"^epd = router\.cli:main$", entry_points, re.M), entry_points


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def process(pid: int) -> tuple[list[str], Path, dict[str, str]]:
    """A process's command line, working directory and environment, from /proc."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    env = dict(
        kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0") if "=" in kv
    )
    return argv, Path(os.readlink(f"/proc/{pid}/cwd")), env


def test_epd_up_serves_the_demo_model_from_the_bare_install(
    bare_install: BareInstall, tmp_path: Path
) -> None:
    t0 = time.monotonic()
    site = bare_install.site_packages()
    work, logs = tmp_path, tmp_path / "logs"
    assert not work.resolve().is_relative_to(REPO_ROOT)
    command = (str(bare_install.python), "-I", str(bare_install.epd))
    with start_cluster(None, logs, command=command, cwd=work, env=bare_install.env(), timeout=300) as c:
        started = time.monotonic() - t0
        assert c.proc is not None
        # The served code and model are the installed copies.
        for name in SERVICES:
            log = (logs / f"{name}.log").read_text(errors="replace")
            m = re.search(r"epd-serve (\S+) \((/[^)]*)\)$", log, re.M)
            assert m, f"{name} logs no 'epd-serve VERSION (DIR)' line:\n{log[-3000:]}"
            assert Path(m.group(2)).is_relative_to(site), f"{name} runs code from {m.group(2)}, not {site}"
            if name != "router":
                assert f" from {site}/shared/assets/demo " in log, log[-3000:]
        pids = {name: c.ready(name)["pid"] for name in SERVICES} | {"epd": c.proc.pid}
        for name, pid in pids.items():
            argv, cwd, env = process(pid)
            assert argv[:2] == [str(bare_install.python), "-I"], (name, argv)
            assert cwd == work.resolve(), (name, cwd)
            assert "PYTHONPATH" not in env and env.get("VIRTUAL_ENV") == str(bare_install.venv), name
        answer = ask_red_circle(c.url + "/v1")
        print(f"\nbare install: {bare_install.summary()}; cluster ready after {started:.0f} s; {answer!r}")
        assert "red" in answer.lower()
        check_loadgen_without_its_extra(bare_install, c.url, work)
        # The decode worker's default: its decode graph compiled before it served (or, where no C++
        # compiler is found, a warning that its steps stay eager).
        decode_log = (logs / "decode-0.log").read_text(errors="replace")
        graph_line = next(
            (ln for ln in decode_log.splitlines() if "decode graph" in ln), "no decode graph line"
        )
        print(f"decode worker: {graph_line.split(': ', 1)[-1]}")
        assert " compiled in " in graph_line or "stay eager" in graph_line, decode_log[-3000:]
        # Ctrl-C: every service stops, and so does epd, with status 0.
        c.proc.send_signal(signal.SIGINT)
        assert c.proc.wait(60) == 0, (logs / "epd.out").read_text()
        assert wait_for(lambda: not any(alive(pid) for pid in pids.values()), 30), {
            n: p for n, p in pids.items() if alive(p)
        }
    assert "cluster stopped" in (logs / "epd.out").read_text()
    print(f"whole test {time.monotonic() - t0:.0f} s")


def check_loadgen_without_its_extra(install: BareInstall, url: str, work: Path) -> None:
    """``epd loadgen`` runs without the loadgen extra; only ``--plots`` (matplotlib) asks for it."""
    loadgen = [str(install.python), "-I", str(install.epd), "loadgen", "--base-url", url + "/v1"]
    small = ["--concurrency", "1", "--num-requests", "2", "--max-tokens", "4", "--image-size", "64x64"]
    run = dict(cwd=work, env=install.env(), capture_output=True, text=True, timeout=180)
    done = subprocess.run([*loadgen, *small, "--no-progress"], **run)  # type: ignore[call-overload]
    assert done.returncode == 0, done.stdout + done.stderr
    plots = subprocess.run([*loadgen, *small, "--plots", str(work / "plots")], **run)  # type: ignore[call-overload]
    assert plots.returncode == 2, plots.stdout + plots.stderr
    assert "pip install 'epd-serve[loadgen]'" in plots.stderr, plots.stderr
    assert not (work / "plots").exists()
