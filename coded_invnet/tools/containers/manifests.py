"""The rendered Kubernetes manifests (`kubectl kustomize k8s/`) as one container per pod on this host:
each StatefulSet replica, one replica of each Deployment (one host has one loopback port per service).

Each container gets the manifest's image, command and args, its env (ConfigMap `envFrom` first, then
`env`, as the kubelet does), user and group, read-only root, dropped capabilities, no privilege
escalation, emptyDir volumes as tmpfs, CPU and memory limits, and its readiness probe as the health check.
What one host needs instead of a cluster network: host networking bound to 127.0.0.1, a loopback port pair
per pod, and the cluster DNS names in the env (`worker-3.worker:8001`, `encoder:8001`, ...) rewritten to
those ports.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from coded_invnet.tools.containers.engine import ROOT, ContainerError, Engine
from services.frontend.discovery import DNS_SCHEME

KUSTOMIZATION = ROOT / "k8s"
PART_OF_LABEL = "app.kubernetes.io/part-of"
POD_LABEL = "coded-invnet.pod"
SYSTEM = "coded-invnet"
LOOPBACK = "127.0.0.1"
# Backend pods get consecutive (gRPC, metrics) port pairs from here; the frontend keeps its manifest ports.
BACKEND_PORTS_FROM = 18001
WORKLOAD_KINDS = ("Deployment", "StatefulSet")
# Seconds a health command needs to start Python before its gRPC call.
HEALTH_COMMAND_START_S = 5


# A native gRPC probe checks grpc.health.v1 on the container's port: this command does the same from inside.
GRPC_PROBE_COMMAND = ("python", "-m", "coded_invnet.rpc.health_check")


@dataclass(frozen=True)
class HealthCheck:
    """A pod's readiness probe as the engine's health check."""

    command: tuple[str, ...]
    interval_s: int
    timeout_s: int
    retries: int

    @classmethod
    def from_probe(cls, probe: dict[str, Any]) -> HealthCheck:
        timeout_s = probe.get("timeoutSeconds", 1)
        if "exec" in probe:
            command = tuple(probe["exec"]["command"])
        elif "grpc" in probe:
            command = (*GRPC_PROBE_COMMAND, "--timeout", str(timeout_s))
            # The kubelet's timeout covers the call; this command also starts Python first.
            timeout_s += HEALTH_COMMAND_START_S
        else:
            raise ContainerError(f"probe {probe}: only exec and grpc probes are translated")
        return cls(command, probe.get("periodSeconds", 10), timeout_s, probe.get("failureThreshold", 3))


@dataclass(frozen=True)
class ContainerSpec:
    """One pod of the rendered manifests as one container on this host."""

    name: str  # the pod's name: worker-3, parity-0, encoder, decoder, frontend
    component: str  # app.kubernetes.io/component
    image: str
    argv: tuple[str, ...]  # command + args
    env: tuple[tuple[str, str], ...]
    user: str  # uid:gid
    read_only_root: bool
    no_new_privileges: bool
    drop_capabilities: tuple[str, ...]
    add_capabilities: tuple[str, ...]
    tmpfs: tuple[tuple[str, str], ...]  # (mount path, options)
    cpus: str | None
    memory: str | None
    port: int
    metrics_port: int
    health: HealthCheck | None
    labels: tuple[tuple[str, str], ...]

    @property
    def target(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def run_args(self, engine: Engine) -> list[str]:
        args = ["run", "--detach", "--name", self.name, "--network", "host", "--user", self.user]
        if engine.name == "podman":
            args += ["--hostname", self.name]  # docker refuses a hostname with the host's network
        if self.read_only_root:
            args += ["--read-only"]
            if engine.name == "podman":
                args += ["--read-only-tmpfs=false"]  # only the manifest's volumes are writable
        if self.no_new_privileges:
            args += ["--security-opt", "no-new-privileges"]
        args += [arg for cap in self.drop_capabilities for arg in ("--cap-drop", cap)]
        args += [arg for cap in self.add_capabilities for arg in ("--cap-add", cap)]
        args += [arg for path, options in self.tmpfs for arg in ("--tmpfs", f"{path}:{options}")]
        if self.cpus:
            args += ["--cpus", self.cpus]
        if self.memory:
            args += ["--memory", self.memory]
        args += [arg for name, value in self.env for arg in ("--env", f"{name}={value}")]
        args += [arg for name, value in self.labels for arg in ("--label", f"{name}={value}")]
        if self.health is None:
            args += ["--no-healthcheck"]
        else:
            args += [
                "--health-cmd",
                shlex.join(self.health.command),
                "--health-interval",
                f"{self.health.interval_s}s",
                "--health-timeout",
                f"{self.health.timeout_s}s",
                "--health-retries",
                str(self.health.retries),
            ]
        return [*args, "--entrypoint", self.argv[0], self.image, *self.argv[1:]]


def render_manifests(kustomization: Path = KUSTOMIZATION) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise ContainerError("kubectl is needed to render the manifests (kubectl kustomize)")
    done = subprocess.run([kubectl, "kustomize", str(kustomization)], capture_output=True, text=True)
    if done.returncode != 0:
        raise ContainerError(f"kubectl kustomize {kustomization} failed:\n{done.stderr}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def cpu_quantity(value: str | int | float) -> str:
    text = str(value)
    return str(int(text[:-1]) / 1000) if text.endswith("m") else text


def memory_quantity(value: str) -> str:
    """Kubernetes binary suffixes (Mi, Gi) to the engines' (m, g: powers of 1024 there too)."""
    units = {"Ki": "k", "Mi": "m", "Gi": "g"}
    for suffix, unit in units.items():
        if value.endswith(suffix):
            return value[: -len(suffix)] + unit
    return value


def size_bytes(quantity: str) -> int:
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "k": 1000, "M": 1000**2, "G": 1000**3}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * factor
    return int(quantity)


def expand_references(text: str, env: Mapping[str, str]) -> str:
    """$(VAR) in command and args, as the kubelet expands it ($$ escapes)."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        text,
    )


def _pod_names(workload: dict[str, Any]) -> list[str]:
    name = workload["metadata"]["name"]
    if workload["kind"] == "StatefulSet":
        return [f"{name}-{i}" for i in range(workload["spec"].get("replicas", 1))]
    return [name]


def _dns_names(workload: dict[str, Any], pod: str, services: list[dict[str, Any]]) -> list[str]:
    """Names other pods dial this pod by: its StatefulSet hostname, or the Services selecting it."""
    labels = workload["spec"]["template"]["metadata"]["labels"]
    if workload["kind"] == "StatefulSet":
        return [f"{pod}.{workload['spec']['serviceName']}"]
    return [
        service["metadata"]["name"]
        for service in services
        if service["spec"].get("selector") and service["spec"]["selector"].items() <= labels.items()
    ]


def _environment(
    container: dict[str, Any], config_maps: Mapping[str, Mapping[str, str]], pod: str
) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" not in source:
            raise ContainerError(f"{pod}: envFrom {source} is not a ConfigMap")
        env.update(config_maps[source["configMapRef"]["name"]])
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = expand_references(variable["value"], env)
        elif variable.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[variable["name"]] = pod
        else:
            raise ContainerError(f"{pod}: env {variable['name']} comes from {variable.get('valueFrom')}")
    return env


def container_specs(
    docs: Sequence[dict[str, Any]],
    frontend_component: str = "frontend",
    backend_ports_from: int = BACKEND_PORTS_FROM,
) -> list[ContainerSpec]:
    """One ContainerSpec per pod of every Deployment and StatefulSet, addresses rewritten to loopback."""
    config_maps = {doc["metadata"]["name"]: doc.get("data", {}) for doc in docs if doc["kind"] == "ConfigMap"}
    services = [doc for doc in docs if doc["kind"] == "Service"]
    workloads = [doc for doc in docs if doc["kind"] in WORKLOAD_KINDS]
    pods = [(workload, pod) for workload in workloads for pod in _pod_names(workload)]

    # Every pod's (grpc, metrics) ports on this host, and each cluster address that reaches it.
    ports: dict[str, tuple[int, int]] = {}
    addresses: dict[str, str] = {}
    next_port = backend_ports_from
    for workload, pod in pods:
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        declared = {port["name"]: port["containerPort"] for port in container["ports"]}
        component = workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        if component == frontend_component:
            ports[pod] = (declared["grpc"], declared["metrics"])
        else:
            ports[pod], next_port = (next_port, next_port + 1), next_port + 2
        host_ports = dict(zip(("grpc", "metrics"), ports[pod], strict=True))
        for dns in _dns_names(workload, pod, services):
            for service in [s for s in services if s["metadata"]["name"] == dns.split(".")[-1]]:
                for service_port in service["spec"]["ports"]:
                    addresses[f"{dns}:{service_port['port']}"] = (
                        f"{LOOPBACK}:{host_ports[service_port['targetPort']]}"
                    )
    # A headless Service named as a discovery target (dns:///worker:8001) stands for all its pods: on one
    # host, the list of their loopback ports (a static pool to the frontend).
    for service in services:
        if service["spec"].get("clusterIP") != "None":
            continue
        selector = service["spec"].get("selector", {}).items()
        members = [
            (w, pod) for w, pod in pods if selector <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        for service_port in service["spec"]["ports"]:
            index = {"grpc": 0, "metrics": 1}[service_port["targetPort"]]
            found = [f"{LOOPBACK}:{ports[pod][index]}" for _, pod in members]
            addresses[f"{DNS_SCHEME}{service['metadata']['name']}:{service_port['port']}"] = ",".join(found)
    address_pattern = re.compile("|".join(re.escape(a) for a in sorted(addresses, key=len, reverse=True)))

    specs = []
    for workload, pod in pods:
        template = workload["spec"]["template"]
        pod_spec = template["spec"]
        (container,) = pod_spec["containers"]
        labels = template["metadata"]["labels"]
        env = _environment(container, config_maps, pod)
        env = {
            name: address_pattern.sub(lambda m: addresses[m.group(0)], value) for name, value in env.items()
        }
        env |= {
            "CODED_HOST": LOOPBACK,
            "CODED_PORT": str(ports[pod][0]),
            "CODED_METRICS_PORT": str(ports[pod][1]),
        }
        security = pod_spec.get("securityContext", {}) | container.get("securityContext", {})
        user, group = security.get("runAsUser"), security.get("runAsGroup", security.get("runAsUser"))
        if user is None or (security.get("runAsNonRoot") and user == 0):
            raise ContainerError(f"{pod}: the manifests must name a non-root runAsUser")
        capabilities = security.get("capabilities", {})
        volumes = {volume["name"]: volume for volume in pod_spec.get("volumes", [])}
        tmpfs = []
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "emptyDir" not in volume:
                raise ContainerError(f"{pod}: volume {mount['name']} is not an emptyDir")
            options = "rw,mode=1777"
            if "sizeLimit" in volume["emptyDir"]:
                options += f",size={size_bytes(volume['emptyDir']['sizeLimit'])}"
            tmpfs.append((mount["mountPath"], options))
        limits = container.get("resources", {}).get("limits", {})
        probe = container.get("readinessProbe")
        argv = [*container.get("command", []), *container.get("args", [])]
        specs.append(
            ContainerSpec(
                name=pod,
                component=labels["app.kubernetes.io/component"],
                image=container["image"],
                argv=tuple(expand_references(arg, env) for arg in argv),
                env=tuple(sorted(env.items())),
                user=f"{user}:{group}",
                read_only_root=bool(security.get("readOnlyRootFilesystem")),
                no_new_privileges=security.get("allowPrivilegeEscalation") is False,
                drop_capabilities=tuple(capabilities.get("drop", [])),
                add_capabilities=tuple(capabilities.get("add", [])),
                tmpfs=tuple(tmpfs),
                cpus=cpu_quantity(limits["cpu"]) if "cpu" in limits else None,
                memory=memory_quantity(limits["memory"]) if "memory" in limits else None,
                port=ports[pod][0],
                metrics_port=ports[pod][1],
                health=HealthCheck.from_probe(probe) if probe else None,
                labels=tuple(sorted({**labels, PART_OF_LABEL: SYSTEM, POD_LABEL: pod}.items())),
            )
        )
    return specs
