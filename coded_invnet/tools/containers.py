"""The whole system as containers on one host, run as the rendered Kubernetes manifests describe it.

    python -m coded_invnet.tools.containers build [--variant cpu|gpu] [--base-image IMAGE]   (make image)
    python -m coded_invnet.tools.containers up                                              (make up)
    python -m coded_invnet.tools.containers down                                            (make down)

`up` renders `kubectl kustomize k8s/` and starts one container per pod (each StatefulSet replica, one
replica of each Deployment: one host has one loopback port per service). Each container gets the
manifest's image, command and args, its env (ConfigMap `envFrom` first, then `env`, as the kubelet does),
user and group, read-only root, dropped capabilities, no privilege escalation, emptyDir volumes as tmpfs,
CPU and memory limits, and its readiness probe as the health check. What one host needs instead of a
cluster network: host networking bound to 127.0.0.1, a loopback port pair per pod, and the cluster DNS
names in the env (`worker-3.worker:8001`, `encoder:8001`, ...) rewritten to those ports.

The engine is docker when its daemon answers, else podman. For podman the host settings this kind of
machine needs live in a containers.conf written under build/ (CONTAINERS_CONF): pinned ulimits (no
CAP_SYS_RESOURCE to raise them) and the runc runtime.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZATION = ROOT / "k8s"
BUILD_DIR = ROOT / "build"
IMAGE_REPOSITORY = "localhost/coded-invnet"
LOCAL_BASE_IMAGE = "localhost/coded-invnet-base:bookworm-py3.11"
BASE_IMAGE_SCRIPT = ROOT / "scripts" / "base-image.sh"
PART_OF_LABEL = "app.kubernetes.io/part-of"
POD_LABEL = "coded-invnet.pod"
SYSTEM = "coded-invnet"
LOOPBACK = "127.0.0.1"
# Backend pods get consecutive (gRPC, metrics) port pairs from here; the frontend keeps its manifest ports.
BACKEND_PORTS_FROM = 18001
WORKLOAD_KINDS = ("Deployment", "StatefulSet")
# Seconds a health command needs to start Python before its gRPC call.
HEALTH_COMMAND_START_S = 5

# Podman on a host without CAP_SYS_RESOURCE cannot raise RLIMIT_NOFILE/NPROC to its defaults, and crun
# refuses the cgroup layout of such hosts where runc accepts it.
PODMAN_CONF = """\
# Written by coded_invnet.tools.containers; podman reads it through CONTAINERS_CONF.
[containers]
# The engine's defaults exceed what a host without CAP_SYS_RESOURCE may set ("setrlimit: not permitted").
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
# crun refuses some hosts' cgroup layouts that runc accepts.
runtime = "runc"
"""


class ContainerError(RuntimeError):
    """A container engine command failed, or the manifests ask for what one host cannot give."""


def project_version() -> str:
    version: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return version


def image_name(target: str, variant: str = "cpu") -> str:
    """The name `make image` gives a Dockerfile target; k8s/ names the same images."""
    return f"{IMAGE_REPOSITORY}:{project_version()}-{'chaos' if target == 'chaos' else variant}"


# --- the engine ---


@dataclass(frozen=True)
class Engine:
    """docker or podman, with the environment its commands run in."""

    name: str
    environ: Mapping[str, str] = field(default_factory=dict)

    def command(self, *args: str) -> list[str]:
        return [self.name, *args]

    def run(
        self, *args: str, check: bool = True, timeout_s: float = 600.0
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.command(*args),
            capture_output=True,
            text=True,
            env={**os.environ, **self.environ},
            timeout=timeout_s,
        )
        if check and done.returncode != 0:
            raise ContainerError(f"{shlex.join(self.command(*args))} failed:\n{done.stderr[-3000:]}")
        return done

    def stream(self, *args: str) -> None:
        """Run with output shown (builds take minutes)."""
        done = subprocess.run(self.command(*args), env={**os.environ, **self.environ})
        if done.returncode != 0:
            raise ContainerError(f"{shlex.join(self.command(*args))} failed with code {done.returncode}")

    def has_image(self, image: str) -> bool:
        return self.run("image", "inspect", image, check=False).returncode == 0

    def image_size_bytes(self, image: str) -> int:
        return int(self.run("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())


def podman_environment() -> dict[str, str]:
    """CONTAINERS_CONF pointing at the project's containers.conf, unless the caller chose one."""
    if os.environ.get("CONTAINERS_CONF"):
        return {}
    conf = BUILD_DIR / "podman" / "containers.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    if not conf.exists() or conf.read_text() != PODMAN_CONF:
        conf.write_text(PODMAN_CONF)
    return {"CONTAINERS_CONF": str(conf)}


def find_engine() -> Engine:
    """docker when its daemon answers (a docker client alone is not enough), else podman."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "info"], capture_output=True, text=True)
        if probe.returncode == 0:
            return Engine("docker")
    if shutil.which("podman"):
        return Engine("podman", podman_environment())
    raise ContainerError(
        "no container engine: install docker or podman (as root, `make engine` installs podman)"
    )


# --- build ---


def build_images(engine: Engine, variant: str = "cpu", base_image: str | None = None) -> dict[str, Any]:
    """Build the serving and (CPU only) chaos images; returns seconds spent and image sizes."""
    report: dict[str, Any] = {"engine": engine.name, "variant": variant}
    if base_image is None:
        base_image = LOCAL_BASE_IMAGE
        if not engine.has_image(base_image):
            started = time.perf_counter()
            subprocess.run(
                [str(BASE_IMAGE_SCRIPT), engine.name, base_image],
                check=True,
                env={**os.environ, **engine.environ},
            )
            report["base_image_s"] = round(time.perf_counter() - started, 1)
    report["base_image"] = base_image
    # Host networking for RUN steps: pip reaches PyPI as this host does, and no bridge network is made.
    common = ["build", "--network", "host", "--build-arg", f"BASE_IMAGE={base_image}"]
    if engine.name == "podman":
        common += ["--format", "docker"]  # OCI images have no HEALTHCHECK
    targets = ("serving", "chaos") if variant == "cpu" else ("serving",)
    for target in targets:
        image = image_name(target, variant)
        started = time.perf_counter()
        engine.stream(
            *common, "--build-arg", f"VARIANT={variant}", "--target", target, "-t", image, str(ROOT)
        )
        report[f"{target}_build_s"] = round(time.perf_counter() - started, 1)
        report[f"{target}_image"] = image
    report["sizes_mb"] = {
        "base": round(engine.image_size_bytes(base_image) / 1e6, 1),
        **{
            target: round(engine.image_size_bytes(image_name(target, variant)) / 1e6, 1) for target in targets
        },
    }
    return report


def image_contents_mb(engine: Engine, image: str, paths: Sequence[str]) -> dict[str, float]:
    """Disk use of folders inside an image (du -s), in MB."""
    done = engine.run("run", "--rm", "--network", "host", "--entrypoint", "du", image, "-sk", *paths)
    sizes = {}
    for line in done.stdout.splitlines():
        kilobytes, path = line.split(None, 1)
        sizes[path] = round(int(kilobytes) * 1024 / 1e6, 1)
    return sizes


# --- the manifests, as containers ---


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


# --- up / down ---


def healthy(engine: Engine, name: str) -> bool:
    """Run the container's health check now (no systemd timers run it on such hosts)."""
    if engine.name == "podman":
        return engine.run("healthcheck", "run", name, check=False, timeout_s=30).returncode == 0
    status = engine.run("inspect", "--format", "{{.State.Health.Status}}", name, check=False)
    return status.stdout.strip() == "healthy"


def is_running(engine: Engine, name: str) -> bool:
    state = engine.run("inspect", "--format", "{{.State.Running}}", name, check=False)
    return state.stdout.strip() == "true"


def logs_tail(engine: Engine, name: str, lines: int = 30) -> str:
    done = engine.run("logs", "--tail", str(lines), name, check=False)
    return (done.stdout + done.stderr)[-4000:]


def wait_healthy(engine: Engine, names: Sequence[str], timeout_s: float) -> None:
    """Until every named container passes its health check; raises with the log of one that does not."""
    deadline = time.monotonic() + timeout_s
    pending = list(names)
    while pending:
        for name in list(pending):
            if not is_running(engine, name):
                raise ContainerError(f"container {name} exited; its log ends:\n{logs_tail(engine, name)}")
            if healthy(engine, name):
                pending.remove(name)
        if pending and time.monotonic() > deadline:
            raise ContainerError(
                f"not healthy within {timeout_s:.0f} s: {', '.join(pending)}; {pending[0]}'s log ends:\n"
                f"{logs_tail(engine, pending[0])}"
            )
        if pending:
            time.sleep(1.0)


def system_containers(engine: Engine) -> list[str]:
    done = engine.run("ps", "--all", "--filter", f"label={PART_OF_LABEL}={SYSTEM}", "--format", "{{.Names}}")
    return done.stdout.split()


def down(engine: Engine) -> list[str]:
    names = system_containers(engine)
    if names:
        engine.run("rm", "--force", *names)
    return names


@dataclass(frozen=True)
class RunningSystem:
    engine: Engine
    specs: tuple[ContainerSpec, ...]
    seconds_to_healthy: float

    @property
    def frontend(self) -> ContainerSpec:
        (frontend,) = [spec for spec in self.specs if spec.component == "frontend"]
        return frontend

    def of_component(self, component: str) -> list[ContainerSpec]:
        return [spec for spec in self.specs if spec.component == component]


def up(engine: Engine, kustomization: Path = KUSTOMIZATION, ready_timeout_s: float = 300.0) -> RunningSystem:
    """Start every pod of the rendered manifests as a container; returns once all are healthy."""
    specs = container_specs(render_manifests(kustomization))
    for image in sorted({spec.image for spec in specs}):
        if not engine.has_image(image):
            raise ContainerError(f"image {image} is missing: make image")
    down(engine)
    started = time.perf_counter()
    for spec in specs:
        engine.run(*spec.run_args(engine))
    wait_healthy(engine, [spec.name for spec in specs], ready_timeout_s)
    return RunningSystem(engine, tuple(specs), round(time.perf_counter() - started, 1))


def restart(engine: Engine, spec: ContainerSpec) -> None:
    """Start a killed container again, as the kubelet restarts a pod's container."""
    engine.run("start", spec.name)


def kill(engine: Engine, spec: ContainerSpec) -> None:
    engine.run("kill", "--signal", "KILL", spec.name)


@contextmanager
def running(engine: Engine, kustomization: Path = KUSTOMIZATION) -> Iterator[RunningSystem]:
    """`up` for the length of a with-block: the containers are removed when it ends, however it ends."""
    try:
        yield up(engine, kustomization)
    finally:
        down(engine)


def iter_commands(specs: Sequence[ContainerSpec], engine: Engine) -> Iterator[str]:
    for spec in specs:
        yield shlex.join(engine.command(*spec.run_args(engine)))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m coded_invnet.tools.containers", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="action", required=True)
    build = commands.add_parser("build", help="build the serving and chaos images (make image)")
    build.add_argument("--variant", choices=("cpu", "gpu"), default="cpu")
    build.add_argument(
        "--base-image", default=None, help=f"default: {LOCAL_BASE_IMAGE}, made from Debian packages"
    )
    start = commands.add_parser("up", help="start every service as a container (make up)")
    start.add_argument("--kustomization", type=Path, default=KUSTOMIZATION)
    start.add_argument("--print-only", action="store_true", help="print podman's commands, start nothing")
    commands.add_parser("down", help="remove the system's containers (make down)")
    args = parser.parse_args(argv)

    if args.action == "up" and args.print_only:
        for line in iter_commands(container_specs(render_manifests(args.kustomization)), Engine("podman")):
            print(line)
        return
    engine = find_engine()
    try:
        if args.action == "build":
            print(json.dumps(build_images(engine, args.variant, args.base_image), indent=2))
        elif args.action == "up":
            system = up(engine, args.kustomization)
            print(
                f"{len(system.specs)} containers healthy after {system.seconds_to_healthy} s "
                f"({engine.name}); frontend (KServe v2 gRPC): {system.frontend.target}\n"
                f"stop them with: make down"
            )
        else:
            removed = down(engine)
            print(f"removed {len(removed)} containers" + (f": {' '.join(removed)}" if removed else ""))
    except ContainerError as error:
        sys.exit(str(error))


if __name__ == "__main__":
    main()
