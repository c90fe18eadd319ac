"""The project as a user gets it: the wheel, installed with its declared dependencies only.

``bare_install(root)`` copies the checkout's files (tracked and untracked, not ignored: what a
commit would hold) to ``root/src``, builds the wheel there (``pip wheel --no-deps``: a copy, so
no stale ``build/`` of the checkout can leak into it), creates a fresh venv ``root/venv`` (no
system site-packages), installs ``torch==2.13.0`` first (the CPU wheel pip's configuration
finds; any other build of torch is gigabytes) and then the wheel without extras, as the
Dockerfile does. ``root`` must lie outside the checkout (pytest's ``tmp_path_factory`` does).
``install_source(root, src)`` is the build and install alone, for a source tree of one's own (a
copy with an edited pyproject.toml, say).

``BareInstall.env()`` is an environment for running that install: no ``PYTHONPATH``, no
development venv on ``PATH``, the bare venv first. Run its Python in isolated mode (``-I``) from a
working directory outside the checkout, so nothing but the installed copy can be imported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.repo import REPO_ROOT

TORCH = "torch==2.13.0"  # as the Makefile and the Dockerfile pin it
ENTRY_POINTS = (
    "router.cli",
    "router.__main__",
    *(f"services.{s}.__main__" for s in ("encoder", "prefill", "decode")),
)


@dataclass
class BareInstall:
    root: Path
    src: Path  # the copy of the checkout the wheel was built from
    wheel: Path
    venv: Path
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def epd(self) -> Path:
        return self.venv / "bin" / "epd"

    def site_packages(self) -> Path:
        out = subprocess.run(
            [str(self.python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True, cwd=self.root, env=self.env(),
        )  # fmt: skip
        return Path(out.stdout.strip())

    def env(self) -> dict[str, str]:
        drop = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV"}
        drop |= {"DECODE_COMPILE_DECODE", "ROUTER_COMPILE_DECODE"}  # the users' defaults (tests/conftest.py)
        env = {k: v for k, v in os.environ.items() if k not in drop}
        dev_bin = Path(sys.executable).parent
        path = [p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p) != dev_bin]
        env["PATH"] = os.pathsep.join([str(self.venv / "bin"), *path])
        env["VIRTUAL_ENV"] = str(self.venv)
        return env

    def summary(self) -> str:
        return ", ".join(f"{k} {v:.0f} s" for k, v in self.timings.items())


def checkout_files(repo: Path = REPO_ROOT) -> list[str]:
    """The checkout's files a commit would hold: tracked and untracked-but-not-ignored ones."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo, capture_output=True, check=True,
    )  # fmt: skip
    names = sorted({n for n in out.stdout.decode().split("\0") if n})
    return [n for n in names if (repo / n).is_file()]  # a tracked file deleted in the work tree: gone


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 900) -> None:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} exited with {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )


def copy_checkout(src: Path, repo: Path = REPO_ROOT) -> None:
    for name in checkout_files(repo):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, src / name)


def bare_install(root: Path, repo: Path = REPO_ROOT) -> BareInstall:
    root = root.resolve()
    assert not root.is_relative_to(repo.resolve()), f"{root} is inside the checkout"
    t0 = time.monotonic()
    copy_checkout(root / "src", repo)
    return install_source(root, root / "src", {"copy": time.monotonic() - t0})


def install_source(root: Path, src: Path, timings: dict[str, float] | None = None) -> BareInstall:
    """Build the wheel of the source tree ``src`` and install it into a fresh ``root/venv``."""
    timings = dict(timings or {})
    t0 = time.monotonic()
    dist, venv = root / "dist", root / "venv"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)], cwd=root)
    (wheel,) = dist.glob("epd_serve-*.whl")
    timings["wheel build"] = time.monotonic() - t0
    t0 = time.monotonic()
    _run([sys.executable, "-m", "venv", str(venv)], cwd=root)
    install = BareInstall(root, src, wheel, venv, timings)
    # --no-compile: byte-compiling all of torch and transformers costs more than compiling, once,
    # what the services import (the import below, which also shows the install imports cleanly).
    pip = [str(install.python), "-I", "-m", "pip", "install", "-q", "--no-compile"]
    _run([*pip, TORCH], cwd=root, env=install.env())
    _run([*pip, str(wheel)], cwd=root, env=install.env())
    _run([str(install.python), "-I", "-m", "pip", "check"], cwd=root, env=install.env())
    _run([str(install.python), "-I", "-c", f"import {', '.join(ENTRY_POINTS)}"], cwd=root, env=install.env())
    timings["venv + install"] = time.monotonic() - t0
    return install
