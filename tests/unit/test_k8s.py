"""Every kustomization renders to valid manifests that agree with what the services read.

Rendering needs `kubectl` (its built-in kustomize); validation uses kubernetes-validate's strict schemas.
Chaos Mesh's PodChaos is a CRD with no schema there, so it is checked against the fields Chaos Mesh requires.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from helpers import KUSTOMIZATIONS, REPO_ROOT, WORKLOAD_KINDS, named, of_kind, pod_spec, render

from coded_invnet.serving.config import ENV_VARS, load_config
from coded_invnet.tools.certificates import make_certificates

ROOT = REPO_ROOT
KUBERNETES_VERSION = "1.37.0"

# The fields Chaos Mesh's admission webhook insists on for a pod-kill (chaos-mesh.org/v1alpha1 PodChaos).
POD_CHAOS_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "chaos-mesh.org/v1alpha1"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["action", "mode", "selector"],
            "properties": {
                "action": {"enum": ["pod-kill", "pod-failure", "container-kill"]},
                "mode": {"enum": ["one", "all", "fixed", "fixed-percent", "random-max-percent"]},
                "value": {"type": "string"},
                "gracePeriod": {"type": "integer", "minimum": 0},
                "duration": {"type": "string"},
                "selector": {
                    "type": "object",
                    "minProperties": 1,
                    "properties": {
                        "namespaces": {"type": "array", "items": {"type": "string"}},
                        "labelSelectors": {"type": "object", "additionalProperties": {"type": "string"}},
                    },
                },
            },
        },
    },
}


def config_map(docs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    (settings,) = [
        doc for doc in of_kind(docs, "ConfigMap") if doc["metadata"]["name"].startswith("coded-invnet")
    ]
    data: dict[str, str] = settings["data"]
    return data


def test_every_overlay_is_rendered_here() -> None:
    assert {str(path) for path in KUSTOMIZATIONS} >= {
        "k8s",
        "k8s/base",
        "k8s/overlays/gpu",
        "k8s/overlays/chaos",
        "k8s/overlays/tls",
        "k8s/overlays/r2",
    }


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=str)
def test_renders_valid_manifests(kustomization: Path) -> None:
    docs = render(kustomization)
    assert of_kind(docs, "Deployment", "StatefulSet")
    for doc in docs:
        if doc["apiVersion"].startswith("chaos-mesh.org/"):
            assert doc["kind"] == "PodChaos", f"no schema here for {doc['kind']}"
            jsonschema.validate(doc, POD_CHAOS_SCHEMA)
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_apply_k_root_deploys_the_cpu_base() -> None:
    assert render(Path("k8s")) == render(Path("k8s/base"))
    images = {
        container["image"]
        for w in of_kind(render(Path("k8s")), *WORKLOAD_KINDS)
        for container in pod_spec(w)["containers"]
    }
    assert all(image.endswith("-cpu") for image in images), images


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=str)
def test_pods_are_locked_down_and_sized(kustomization: Path) -> None:
    for workload in of_kind(render(kustomization), *WORKLOAD_KINDS):
        name = workload["metadata"]["name"]
        pod = pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            assert {"cpu", "memory"} <= container["resources"]["requests"].keys(), name
            assert {"cpu", "memory"} <= container["resources"]["limits"].keys(), name


def test_services_probes_and_ports_agree() -> None:
    docs = render(Path("k8s/base"))
    settings = config_map(docs)
    grpc_port, metrics_port = int(settings["CODED_PORT"]), int(settings["CODED_METRICS_PORT"])
    workloads = of_kind(docs, "Deployment", "StatefulSet")
    for workload in workloads:
        (container,) = pod_spec(workload)["containers"]
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert ports == {"grpc": grpc_port, "metrics": metrics_port}, workload["metadata"]["name"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == grpc_port, (workload["metadata"]["name"], probe)
        module = container["command"][container["command"].index("-m") + 1]
        assert (ROOT / (module.replace(".", "/") + ".py")).exists(), f"{module} (in the manifests) is missing"
    for service in of_kind(docs, "Service"):
        selected = [
            w
            for w in workloads
            if service["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, f"Service {service['metadata']['name']} selects {len(selected)} workloads"
        assert {port["targetPort"] for port in service["spec"]["ports"]} == {"grpc", "metrics"}
    for budget in of_kind(docs, "PodDisruptionBudget"):
        labels = budget["spec"]["selector"]["matchLabels"].items()
        assert any(labels <= w["spec"]["template"]["metadata"]["labels"].items() for w in workloads)


@pytest.mark.parametrize(("kustomization", "parities"), [("k8s/base", 1), ("k8s/overlays/r2", 2)])
def test_a_worker_pool_of_at_least_k_plus_r_autoscaled_and_disrupted_r_at_a_time(
    kustomization: str, parities: int
) -> None:
    docs = render(Path(kustomization))
    settings = config_map(docs)
    k, r = int(settings["CODED_K"]), int(settings["CODED_PARITIES"])
    assert r == parities
    for service in ("encoder", "decoder", "frontend"):
        environ = {name: value for name, value in settings.items() if name in ENV_VARS[service]}
        assert load_config(service, [], environ).parities == r
    workers = named(docs, "StatefulSet", "worker")
    assert not of_kind(docs, "StatefulSet")[1:], "one StatefulSet: the pool"
    assert workers["spec"]["replicas"] >= k + r
    headless = named(docs, "Service", workers["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and not headless["spec"]["publishNotReadyAddresses"]
    scaler = named(docs, "HorizontalPodAutoscaler", "worker")
    assert scaler["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": "worker",
    }
    assert (
        k + r <= scaler["spec"]["minReplicas"] <= workers["spec"]["replicas"] <= scaler["spec"]["maxReplicas"]
    )
    frontend_scaler = named(docs, "HorizontalPodAutoscaler", "frontend")
    assert frontend_scaler["spec"]["scaleTargetRef"]["name"] == "frontend"
    assert named(docs, "PodDisruptionBudget", "worker")["spec"]["maxUnavailable"] == r
    for coder in ("encoder", "decoder"):
        assert named(docs, "Deployment", coder)["spec"]["replicas"] >= 2
        assert named(docs, "Service", coder)["spec"]["clusterIP"] == "None"


def test_gpu_overlay_puts_workers_on_gpus() -> None:
    docs = render(Path("k8s/overlays/gpu"))
    for workload in of_kind(docs, *WORKLOAD_KINDS):
        (container,) = pod_spec(workload)["containers"]
        on_gpu = workload["metadata"]["name"] == "worker"
        assert (container["resources"]["limits"].get("nvidia.com/gpu") == "1") == on_gpu
        environ = {env["name"]: env["value"] for env in container.get("env", [])}
        assert (environ.get("CODED_DEVICE") == "cuda") == on_gpu
        if on_gpu:
            assert load_config("worker", [], environ).device == "cuda"
        assert container["image"].endswith("-gpu")


def test_chaos_job_may_delete_exactly_the_data_workers() -> None:
    docs = render(Path("k8s/overlays/chaos"))
    k = int(config_map(docs)["CODED_K"])
    job = named(docs, "Job", "chaos-runner")
    account = pod_spec(job)["serviceAccountName"]
    named(docs, "ServiceAccount", account)
    (binding,) = [
        b
        for b in of_kind(docs, "RoleBinding")
        if {"kind": "ServiceAccount", "name": account, "namespace": job["metadata"]["namespace"]}
        in b["subjects"]
    ]
    role = named(docs, "Role", binding["roleRef"]["name"])
    deletable = {
        name for rule in role["rules"] if "delete" in rule["verbs"] for name in rule["resourceNames"]
    }
    scaler = named(docs, "HorizontalPodAutoscaler", "worker")
    assert deletable == {f"worker-{i}" for i in range(scaler["spec"]["maxReplicas"])}
    args = pod_spec(job)["containers"][0]["args"]
    assert k < int(args[args.index("--pool-size") + 1]) <= scaler["spec"]["minReplicas"]
    chaos = named(docs, "PodChaos", "worker-pod-kill")
    worker_labels = named(docs, "StatefulSet", "worker")["spec"]["template"]["metadata"]["labels"]
    assert chaos["spec"]["selector"]["labelSelectors"].items() <= worker_labels.items()
    assert chaos["spec"]["selector"]["namespaces"] == [job["metadata"]["namespace"]]


def test_env_vars_and_addresses_match_what_the_services_read() -> None:
    """Every CODED_* variable is one its service reads (coded_invnet.serving.config.ENV_VARS), parses, and
    the frontend's targets name the Services, pods and ports that exist."""
    docs = render(Path("k8s/base"))
    shared = config_map(docs)
    assert shared.keys() <= set().union(*ENV_VARS.values()), "ConfigMap keys no service reads"
    configs = {}
    for workload in of_kind(docs, "Deployment", "StatefulSet"):
        (container,) = pod_spec(workload)["containers"]
        service = container["command"][-1].removeprefix("services.").removesuffix(".server")
        explicit = {env["name"]: env["value"] for env in container.get("env", [])}
        assert explicit.keys() <= set(ENV_VARS[service]), (
            f"{workload['metadata']['name']} sets unread variables"
        )
        environ = {name: value for name, value in shared.items() if name in ENV_VARS[service]} | explicit
        config = configs[workload["metadata"]["name"]] = load_config(service, [], environ)
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert (config.port, config.metrics_port) == (ports["grpc"], ports["metrics"])
    assert configs["worker"].role == "pool"
    frontend = configs["frontend"]
    workers = named(docs, "StatefulSet", "worker")
    assert frontend.workers == (f"dns:///{workers['spec']['serviceName']}:{frontend.port}",)
    assert not frontend.parity_worker, "parity batches go to the pool"
    for target in (frontend.encoder, frontend.decoder):
        host, port = target.removeprefix("dns:///").split(":")
        assert int(port) in {p["port"] for p in named(docs, "Service", host)["spec"]["ports"]}


def test_tls_overlay_mounts_the_secret_and_every_service_reads_its_settings(tmp_path: Path) -> None:
    """Each pod mounts the Secret, probes over TLS, and its CODED_TLS_* settings parse once the Secret's
    files are where they point (here: certificates made for the test, in place of the mount)."""
    docs = render(Path("k8s/overlays/tls"))
    shared = config_map(docs)
    made = make_certificates(tmp_path)
    secret_files = {
        "ca.crt": made.ca,
        "tls.crt": made.server_cert,
        "tls.key": made.server_key,
        "client.crt": made.client_cert,
        "client.key": made.client_key,
    }
    probe = ["python", "-m", "coded_invnet.rpc.health_check"]
    assert (ROOT / "coded_invnet" / "rpc" / "health_check.py").exists()
    for workload in of_kind(docs, "Deployment", "StatefulSet"):
        name = workload["metadata"]["name"]
        pod = pod_spec(workload)
        (container,) = pod["containers"]
        (volume,) = [v for v in pod["volumes"] if "secret" in v]
        assert volume["secret"]["secretName"] == "coded-invnet-tls", name
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        assert mount["readOnly"] is True, name
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[kind]["exec"]["command"] == probe, (name, kind)
        service = container["command"][-1].removeprefix("services.").removesuffix(".server")
        explicit = {env["name"]: env["value"] for env in container.get("env", [])}
        assert explicit.keys() <= set(ENV_VARS[service]), f"{name} sets unread variables"
        environ = {key: value for key, value in shared.items() if key in ENV_VARS[service]} | explicit
        prefix = mount["mountPath"].rstrip("/") + "/"
        local = {
            key: str(secret_files[value.removeprefix(prefix)]) if value.startswith(prefix) else value
            for key, value in environ.items()
        }
        config = load_config(service, [], local)
        assert config.tls_cert is not None and config.tls_ca is not None, name
        assert config.tls_client_cert is not None, name  # the frontend's to its backends; the probes'
        assert config.tls_require_client_cert == ("off" if name == "frontend" else "on"), name
