"""deploy/k8s renders, with the real kustomize, into objects the Kubernetes API accepts (its
schemas, strict: an unknown field fails), and keeps the promises the services rely on: commands and
environment variables that are the services' real flags, probes on the routes the services serve,
a grace period longer than the drain, registration through the routers' headless Service, API keys
and CurveZMQ keys from Secrets, GPUs for the workers of the gpu overlay, closed ZMQ ports, an autoscaler and
disruption budgets."""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
import typing
from collections.abc import Callable
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from router.config import parse_config as parse_router
from services.decode.config import parse_config as parse_decode
from services.encoder.config import parse_config as parse_encoder
from services.prefill.config import parse_config as parse_prefill
from tests.deploy.k8s import (
    COMPONENTS,
    ENV_PREFIX,
    MODULES,
    OVERLAYS,
    WORKERS,
    Obj,
    component,
    container,
    deployments,
    env_of,
    flag_values,
    named,
    port_number,
    render,
    selects,
)

pytestmark = pytest.mark.unit

K8S_VERSION = "1.33.0"  # the oldest Kubernetes the manifests are checked against
PARSERS: dict[str, Callable[[list[str]], Any]] = {
    "router": parse_router, "encoder": parse_encoder, "prefill": parse_prefill, "decode": parse_decode,
}  # fmt: skip
PORT_FLAGS = {  # container port name -> the flag that binds it
    "router": {"http": "--port", "inbox": "--inbox-port"},
    "encoder": {"zmq": "--port", "http": "--http-port"},
    "prefill": {"zmq": "--port", "inbox": "--inbox-port", "http": "--http-port"},
    "decode": {"zmq": "--port", "kv": "--kv-port", "http": "--http-port"},
}
INBOX = "tcp://epd-router-inbox:5900"
POD_IP = "10.1.2.3"  # what the downward API gives a pod, for parsing the commands

rendered = functools.cache(render)


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[Obj]]:
    return request.param, rendered(request.param)


def schema_errors(obj: Obj) -> str:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = "/".join(str(p) for p in e.path)
        return f"{obj['kind']} {obj['metadata']['name']}: {where}: {e.message}"
    return ""


def test_every_object_is_valid_for_kubernetes(overlay):
    name, objs = overlay
    errors = [e for e in map(schema_errors, objs) if e]
    assert not errors, f"{name}:\n" + "\n".join(errors)
    kinds = {o["kind"] for o in objs}
    assert {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    assert "HorizontalPodAutoscaler" in kinds


def test_validation_is_strict():
    broken = copy.deepcopy(deployments(rendered("cpu-demo"))["decode"])
    container(broken)["readinesProbe"] = container(broken).pop("readinessProbe")  # a typo
    assert "readinesProbe" in schema_errors(broken)


def test_labels_and_selectors(overlay):
    name, objs = overlay
    deps = deployments(objs)
    assert sorted(deps) == sorted(COMPONENTS), f"{name}: one Deployment per component"
    for o in objs:
        labels = o["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "epd", f"{o['kind']} {o['metadata']['name']}"
    for comp, d in deps.items():
        assert d["spec"]["selector"]["matchLabels"] == {
            "app.kubernetes.io/part-of": "epd", "app.kubernetes.io/component": comp,
        }  # fmt: skip
        assert selects(d["spec"]["selector"]["matchLabels"], d)
    for kind in ("Service", "PodDisruptionBudget"):
        for o in named(objs, kind).values():
            selector = o["spec"]["selector"]
            selector = selector.get("matchLabels", selector)  # a Service's selector is the map itself
            picked = [c for c, d in deps.items() if selects(selector, d)]
            assert picked == [component(o)], f"{kind} {o['metadata']['name']} selects {picked}"


def parsed(comp: str, c: Obj, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The container's command parsed by its service's own flag parser, under its environment."""
    for var, e in env_of(c).items():
        if "value" in e:
            monkeypatch.setenv(var, e["value"])
        elif e["valueFrom"].get("fieldRef", {}).get("fieldPath") == "status.podIP":
            monkeypatch.setenv(var, POD_IP)
    args = [a.replace("$(POD_IP)", POD_IP) for a in c["command"][3:]]
    return PARSERS[comp](args)


def field_names(cls: type) -> set[str]:
    """Every field of a config, nested configs flattened as shared/flags.py does."""
    hints = typing.get_type_hints(cls)
    out = set()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        nested = isinstance(tp, type) and dataclasses.is_dataclass(tp)
        out |= field_names(tp) if nested else {f.name}
    return out


def test_commands_are_the_services_flags(overlay, monkeypatch):
    name, objs = overlay
    for comp, d in deployments(objs).items():
        c = container(d)
        assert c["command"][:3] == ["python", "-m", MODULES[comp]], c["command"]
        assert c["imagePullPolicy"] == "IfNotPresent", "a locally loaded image is in no registry"
        cfg = parsed(comp, c, monkeypatch)
        fields = field_names(type(cfg))
        flags = flag_values(c["command"])
        unknown = {f for f in flags if f.removeprefix("--").replace("-", "_") not in fields}
        assert not unknown, f"{name} {comp}: {sorted(unknown)} (argparse takes abbreviations: spell them out)"
        own = {v.removeprefix(ENV_PREFIX[comp]).lower() for v in env_of(c) if v.startswith(ENV_PREFIX[comp])}
        bad = sorted(ENV_PREFIX[comp] + v.upper() for v in own - fields)
        assert not bad, f"{name} {comp}: {bad} name no flag"
        for port in c["ports"]:  # each container port is the one its flag binds
            assert flags[PORT_FLAGS[comp][port["name"]]] == str(port["containerPort"]), (comp, port)
        if comp != "router":  # torch's pool and OpenMP's sized alike, to the pod's CPUs
            env = env_of(c)
            assert env[ENV_PREFIX[comp] + "TORCH_THREADS"]["value"] == env["OMP_NUM_THREADS"]["value"]
        assert cfg.host == "0.0.0.0"
        if comp == "router":
            assert not cfg.encoders and not cfg.prefills, "routers learn workers from their reports"
            assert (cfg.inbox_host, cfg.advertise_host) == ("0.0.0.0", POD_IP)
        else:
            assert cfg.report_to == INBOX and cfg.reachable_host == POD_IP


def probe_port(c: Obj, probe: str) -> int:
    return port_number(c, c[probe]["httpGet"]["port"])


def prestop_seconds(c: Obj) -> float:
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", command
    return float(command[1])


def test_workers_probes_drain_and_resources(overlay, monkeypatch):
    name, objs = overlay
    for comp, d in deployments(objs).items():
        c, spec = container(d), d["spec"]["template"]["spec"]
        http = port_number(c, "http")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert probe_port(c, probe) == http, f"{name} {comp} {probe}"
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{name} {comp} {kind}"
        grace = spec["terminationGracePeriodSeconds"]
        if comp == "router":
            assert c["readinessProbe"]["httpGet"]["path"] == "/health"
            assert c["livenessProbe"]["httpGet"]["path"] == "/livez"  # not /health: no worker is no crash
            assert grace >= 60 + prestop_seconds(c)  # a stream's finish
            continue
        assert (c["readinessProbe"]["httpGet"]["path"], c["livenessProbe"]["httpGet"]["path"]) == (
            "/ready", "/livez",
        )  # fmt: skip
        assert c["startupProbe"]["httpGet"]["path"] == "/ready"  # liveness waits for the model
        cfg = parsed(comp, c, monkeypatch)
        assert grace > prestop_seconds(c) + cfg.drain_timeout_s, f"{name} {comp}: the drain is cut short"
        advertised = env_of(c)[ENV_PREFIX[comp] + "ADVERTISE_HOST"]
        assert advertised["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}


def test_workers_report_to_every_router(overlay):
    name, objs = overlay
    deps, services = deployments(objs), named(objs, "Service")
    inbox = services["epd-router-inbox"]["spec"]
    assert inbox["clusterIP"] == "None", "headless: the name resolves to every router pod"
    assert inbox["publishNotReadyAddresses"], "routers are not ready until workers have registered"
    (port,) = inbox["ports"]
    router = container(deps["router"])
    assert (port["port"], port_number(router, port["targetPort"])) == (5900, 5900)
    assert deps["router"]["spec"]["replicas"] == 2
    api = services["epd-router"]["spec"]
    assert api.get("type", "ClusterIP") == "ClusterIP" and api.get("clusterIP") != "None"
    assert [(p["port"], port_number(router, p["targetPort"])) for p in api["ports"]] == [(8000, 8000)]
    for w in WORKERS:
        assert flag_values(container(deps[w])["command"])["--report-to"] == INBOX
        assert services[f"epd-{w}"]["spec"]["clusterIP"] == "None"


def test_api_keys_come_from_a_secret(overlay):
    name, objs = overlay
    ref = env_of(container(deployments(objs)["router"]))["ROUTER_API_KEYS"]["valueFrom"]["secretKeyRef"]
    assert ref["key"] == "keys" and ref["name"].startswith("epd-api-keys"), ref
    assert not ref.get("optional"), "no Secret must not mean no authentication"
    secrets = named(objs, "Secret")
    if name == "cpu-demo":  # generated with a demo key; gpu: the user creates epd-api-keys
        assert secrets[ref["name"]]["data"]["keys"]
    else:
        assert ref["name"] == "epd-api-keys" and not secrets


def test_curve_keys_come_from_a_secret(overlay, monkeypatch):
    """Every pod mounts the Secret epd-curve-keys read-only where its --curve-keys points, readable
    by the image's group only; no Secret is no start, never a plain mesh."""
    name, objs = overlay
    secrets = named(objs, "Secret")
    for comp, d in deployments(objs).items():
        c, spec = container(d), d["spec"]["template"]["spec"]
        cfg = parsed(comp, c, monkeypatch)
        (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == str(cfg.curve_keys)]
        (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        secret = volume["secret"]
        assert mount["readOnly"] and not secret.get("optional"), comp
        assert secret["defaultMode"] == 0o440 and spec["securityContext"]["fsGroup"] == 10001, comp
        assert secret["secretName"].startswith("epd-curve-keys")
        if name == "cpu-demo":  # the demo's generated key set; gpu: the user creates epd-curve-keys
            assert set(secrets[secret["secretName"]]["data"]) == {
                "server.key", "server.key_secret", "client.key", "client.key_secret",
            }  # fmt: skip
        else:
            assert secret["secretName"] == "epd-curve-keys"


def test_gpu_overlay_gives_each_worker_a_gpu():
    deps = deployments(rendered("gpu"))
    for comp, d in deps.items():
        c, spec = container(d), d["spec"]["template"]["spec"]
        env = {k: e["value"] for k, e in env_of(c).items() if "value" in e}
        model = env[ENV_PREFIX[comp] + "MODEL"]
        (mount,) = [m for m in c["volumeMounts"] if model.startswith(m["mountPath"] + "/")]
        (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        assert volume["persistentVolumeClaim"]["claimName"] == "epd-model" and mount["readOnly"]
        assert c["image"] == "epd:cuda", "a CUDA build of torch"
        if comp == "router":
            assert "nvidia.com/gpu" not in c["resources"]["limits"]
            continue
        gpus = {k: c["resources"][k].get("nvidia.com/gpu") for k in ("requests", "limits")}
        assert gpus["limits"] == 1 and gpus["requests"] in (None, 1), f"{comp}: {gpus}"
        assert (env[f"{comp.upper()}_DEVICE"], env[f"{comp.upper()}_DTYPE"]) == ("cuda", "bfloat16")
        assert f"{comp.upper()}_KV_CACHE_MEMORY" not in env, "the GPU's memory sizes the KV pool"
        assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"]), comp
    assert deps["decode"]["spec"]["replicas"] == 2
    for comp, d in deployments(rendered("cpu-demo")).items():  # the demo: CPU, the bundled model
        c = container(d)
        assert "nvidia.com/gpu" not in c["resources"]["limits"]
        assert "models" not in [m["name"] for m in c["volumeMounts"]], "no model volume"
        assert ENV_PREFIX[comp] + "MODEL" not in env_of(c) and "--model" not in c["command"]


def admits(rule: Obj, port: Obj) -> bool:
    ports = rule.get("ports")
    return ports is None or any(p["port"] in (port["containerPort"], port["name"]) for p in ports)


def test_network_policy_keeps_zmq_and_worker_ports_inside(overlay):
    name, objs = overlay
    policies = named(objs, "NetworkPolicy").values()
    epd_only = [{"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "epd"}}}]
    for comp, d in deployments(objs).items():
        selecting = [p for p in policies if selects(p["spec"]["podSelector"].get("matchLabels", {}), d)]
        assert all("Ingress" in p["spec"]["policyTypes"] for p in selecting) and selecting
        for port in container(d)["ports"]:
            rules = [r for p in selecting for r in p["spec"].get("ingress", []) if admits(r, port)]
            where = f"{name} {comp} {port['name']} {port['containerPort']}"
            assert rules, f"{where}: no policy admits it"
            if comp == "router" and port["name"] == "http":  # the OpenAI API: any client
                assert any("from" not in r for r in rules), where
            else:
                assert all(r.get("from") == epd_only for r in rules), f"{where}: open beyond epd pods"


def test_autoscaler_and_disruption_budgets(overlay):
    name, objs = overlay
    deps = deployments(objs)
    (hpa,) = named(objs, "HorizontalPodAutoscaler").values()
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "epd-decode"}
    assert spec["minReplicas"] == deps["decode"]["spec"]["replicas"] < spec["maxReplicas"]
    (metric,) = spec["metrics"]
    assert re.fullmatch(r"router_\w+", metric[metric["type"].lower()]["metric"]["name"]), metric
    budgets = {component(p): p["spec"] for p in named(objs, "PodDisruptionBudget").values()}
    assert sorted(budgets) == sorted(COMPONENTS)
    assert budgets["router"]["minAvailable"] == 1 < deps["router"]["spec"]["replicas"]
    for w in WORKERS:
        assert budgets[w]["maxUnavailable"] == 1


def test_the_decode_worker_keeps_its_compiled_step_across_container_restarts():
    """Inductor's cache lies in a pod volume (emptyDir outlives a container), in every overlay."""
    for overlay in ("cpu-demo", "gpu"):
        d = deployments(rendered(overlay))["decode"]
        c = container(d)
        env = {e["name"]: e.get("value") for e in c["env"]}
        (mount,) = [m for m in c["volumeMounts"] if m["name"] == "compile-cache"]
        assert env["TORCHINDUCTOR_CACHE_DIR"].startswith(mount["mountPath"] + "/"), overlay
        (volume,) = [v for v in d["spec"]["template"]["spec"]["volumes"] if v["name"] == "compile-cache"]
        assert "emptyDir" in volume, overlay
