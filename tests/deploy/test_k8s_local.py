"""The cpu-demo overlay's Deployments, run as local processes on loopback, answer chats.

As tests/router/test_compose_local.py does for docker-compose.yml: the overlay is rendered by the
real kustomize and each Deployment's container, its command and environment as the kubelet would
resolve them, runs as processes of this machine, one per replica (two routers, as the base asks).
Translated for one machine: every pod gets its own free local port for each container port; a
Service name with a port becomes the addresses of every pod it selects (the routers' headless inbox
Service resolves to one address per router pod, so a worker's --report-to lists each router); the
pod IP (the downward API's status.podIP, and ``$(POD_IP)`` expanded from it) and the wildcard host
become 127.0.0.1; the API key Secret a test key; a Secret volume (the CurveZMQ keys) a folder
holding the Secret's files, where the pod's environment points; ``python`` the test's interpreter, one torch
thread per process. Each pod waits for its own readiness probe (a router's /health is ready once
every stage has a worker registered with it: routers are given no worker list), then the official
openai client asks each router, with the key, about a picture of a red circle.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.demo_pictures import data_url, shape_png
from tests.deploy.k8s import (
    ENV_PREFIX,
    Obj,
    container,
    deployments,
    env_of,
    named,
    port_number,
    render,
    selects,
)
from tests.router.test_compose_local import free_port

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

LOOPBACK = "127.0.0.1"
READY_TIMEOUT_S = 240.0


@dataclass
class Pod:
    component: str
    replica: int
    ports: dict[int, int]  # container port -> local port
    proc: subprocess.Popen | None = None
    log: Path = field(default_factory=Path)

    @property
    def name(self) -> str:
        return f"{self.component}-{self.replica}"

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else "(no log)"


class Loopback:
    """The rendered objects' pods, each translated into a command and environment for loopback."""

    def __init__(self, objs: list[Obj], api_key: str, root: Path) -> None:
        self.root = root  # where Secret volumes are written
        self.deps = deployments(objs)
        self.services = named(objs, "Service")
        self.secrets = named(objs, "Secret")
        self.api_key = api_key
        self.pods = [
            Pod(comp, i, {p["containerPort"]: free_port() for p in container(d)["ports"]})
            for comp, d in self.deps.items()
            for i in range(d["spec"].get("replicas", 1))
        ]

    def container(self, pod: Pod) -> Obj:
        return container(self.deps[pod.component])

    def of(self, comp: str) -> list[Pod]:
        return [p for p in self.pods if p.component == comp]

    def service_addresses(self, name: str, port: int) -> list[str]:
        """``name:port`` of a Service -> ``127.0.0.1:PORT`` of every pod it selects."""
        spec = self.services[name]["spec"]
        (comp,) = [c for c, d in self.deps.items() if selects(spec["selector"], d)]
        (sp,) = [p for p in spec["ports"] if p["port"] == port]
        target = port_number(container(self.deps[comp]), sp["targetPort"])
        return [f"{LOOPBACK}:{pod.ports[target]}" for pod in self.of(comp)]

    def value(self, text: str) -> str:
        def service(m: re.Match) -> str:
            scheme, host, port = m.group(1), m.group(2), int(m.group(3))
            if host not in self.services:
                return m.group(0)
            return ",".join(scheme + a for a in self.service_addresses(host, port))

        text = re.sub(r"(tcp://|http://)?([a-z0-9][a-z0-9-]*):(\d+)\b", service, text)
        return LOOPBACK if text == "0.0.0.0" else text

    def secret_volumes(self, pod: Pod) -> dict[str, str]:
        """Each Secret volume's mount path -> a local folder holding the Secret's files (0600)."""
        volumes = {
            v["name"]: v for v in self.deps[pod.component]["spec"]["template"]["spec"].get("volumes", [])
        }
        out = {}
        for mount in self.container(pod).get("volumeMounts", []):
            secret = volumes[mount["name"]].get("secret")
            if secret is None:
                continue
            folder = self.root / pod.name / mount["name"]
            folder.mkdir(parents=True, exist_ok=True)
            for key, data in self.secrets[secret["secretName"]]["data"].items():
                (folder / key).write_bytes(base64.b64decode(data))
                (folder / key).chmod(0o600)
            out[mount["mountPath"]] = str(folder)
        return out

    def environment(self, pod: Pod) -> dict[str, str]:
        env = {}
        mounts = self.secret_volumes(pod)
        for name, e in env_of(self.container(pod)).items():
            if "value" in e:
                env[name] = mounts.get(e["value"]) or self.value(e["value"])
                continue
            source = e["valueFrom"]
            if "fieldRef" in source:
                assert source["fieldRef"]["fieldPath"] == "status.podIP", source
                env[name] = LOOPBACK
            else:
                ref = source["secretKeyRef"]
                assert ref["key"] in self.secrets[ref["name"]]["data"], ref  # the overlay's Secret
                env[name] = self.api_key
        env["OMP_NUM_THREADS"] = "1"  # five processes share the machine's cores
        if pod.component != "router":
            env[ENV_PREFIX[pod.component] + "TORCH_THREADS"] = "1"
        return env

    def command(self, pod: Pod, env: dict[str, str]) -> list[str]:
        # $(VAR) is expanded from the container's environment, as the kubelet does
        cmd = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in self.container(pod)["command"]]
        assert cmd[0] == "python", cmd
        out = [sys.executable]
        for flag, value in zip(cmd, cmd[1:], strict=False):
            own = flag.endswith("-port") and value.isdigit() and int(value) in pod.ports
            out.append(str(pod.ports[int(value)]) if own else self.value(value))
        return out

    def probe_url(self, pod: Pod) -> str:
        c = self.container(pod)
        get = c["readinessProbe"]["httpGet"]
        return f"http://{LOOPBACK}:{pod.ports[port_number(c, get['port'])]}{get['path']}"


def wait_ready(pod: Pod, url: str, deadline: float) -> None:
    assert pod.proc is not None
    last = ""
    while time.monotonic() < deadline:
        if pod.proc.poll() is not None:
            pytest.fail(f"{pod.name} exited with {pod.proc.returncode}:\n{pod.log_tail()}")
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text[:300]}"
        except httpx.HTTPError as e:
            last = repr(e)
        time.sleep(0.5)
    pytest.fail(f"{pod.name} not ready at {url} ({last}):\n{pod.log_tail()}")


def ask_red_circle(base_url: str, api_key: str) -> str:
    """tests/demo_pictures.py's question, asked with an API key."""
    import openai
    from openai.types.chat import ChatCompletionUserMessageParam

    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=60)
    model = client.models.list().data[0].id
    message: ChatCompletionUserMessageParam = {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": data_url(shape_png("circle", "red", "top left"))}},
            {"type": "text", "text": "What colour is the circle?"},
        ],
    }
    out = client.chat.completions.create(model=model, messages=[message], max_tokens=16, temperature=0)
    return out.choices[0].message.content or ""


def test_cpu_demo_deployments_run_as_local_processes(tmp_path):
    import openai

    t0 = time.monotonic()
    key = secrets.token_hex(8)
    cluster = Loopback(render("cpu-demo"), key, tmp_path)
    routers = cluster.of("router")
    assert len(routers) == 2 and all(cluster.of(w) for w in ("encoder", "prefill", "decode"))
    try:
        for pod in cluster.pods:  # all at once, as a rollout starts them
            env = cluster.environment(pod)
            pod.log = tmp_path / f"{pod.name}.log"
            with open(pod.log, "w") as log:
                pod.proc = subprocess.Popen(
                    cluster.command(pod, env), cwd=tmp_path, env={**os.environ, **env},
                    stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
        deadline = time.monotonic() + READY_TIMEOUT_S
        for pod in sorted(cluster.pods, key=lambda p: p.component == "router"):  # workers first
            wait_ready(pod, cluster.probe_url(pod), deadline)
        for pod in cluster.pods:  # the Secret's keys are in force: the mesh is CurveZMQ
            assert "CurveZMQ on every socket" in pod.log.read_text(), pod.log_tail()
        answers = {}
        for pod in routers:  # each router learned every stage from the workers' reports
            url = f"http://{LOOPBACK}:{pod.ports[8000]}/v1"
            with pytest.raises(openai.AuthenticationError):
                ask_red_circle(url, "not-" + key)
            answers[pod.name] = ask_red_circle(url, key)
        print(f"\ncpu-demo pods as processes: {[p.name for p in cluster.pods]}; {answers}; "
              f"{time.monotonic() - t0:.0f} s")  # fmt: skip
        assert all("red" in a.lower() for a in answers.values()), answers
    finally:
        started = [p for p in cluster.pods if p.proc is not None]
        for pod in started:
            if pod.proc is not None and pod.proc.poll() is None:
                pod.proc.send_signal(signal.SIGTERM)
        for pod in started:
            assert pod.proc is not None
            try:
                pod.proc.wait(timeout=90)  # a worker drains (nothing in flight here) and exits
            except subprocess.TimeoutExpired:
                pod.proc.kill()
                pod.proc.wait()
    codes = {p.name: p.proc.returncode for p in cluster.pods if p.proc is not None}
    assert all(c in (0, -signal.SIGTERM) for c in codes.values()), codes
