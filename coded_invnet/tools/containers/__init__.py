"""The whole system as containers on one host, run as the rendered Kubernetes manifests describe it.

    python -m coded_invnet.tools.containers build [--variant cpu|gpu] [--base-image IMAGE]   (make image)
    python -m coded_invnet.tools.containers up                                              (make up)
    python -m coded_invnet.tools.containers down                                            (make down)

`up` starts one container per pod of `kubectl kustomize k8s/`, on loopback. The modules:
- engine: docker or podman (and podman's containers.conf), the image builds;
- manifests: the rendered manifests as one ContainerSpec per pod, and its `run` command line;
- system: up, down, waiting for the health checks;
- cli: the command line (__main__ runs it).
"""

from coded_invnet.tools.containers.cli import main
from coded_invnet.tools.containers.engine import (
    BASE_IMAGE_SCRIPT,
    BUILD_DIR,
    IMAGE_REPOSITORY,
    LOCAL_BASE_IMAGE,
    PODMAN_CONF,
    ROOT,
    ContainerError,
    Engine,
    build_images,
    find_engine,
    image_contents_mb,
    image_name,
    podman_environment,
    project_version,
)
from coded_invnet.tools.containers.manifests import (
    BACKEND_PORTS_FROM,
    GRPC_PROBE_COMMAND,
    HEALTH_COMMAND_START_S,
    KUSTOMIZATION,
    LOOPBACK,
    PART_OF_LABEL,
    POD_LABEL,
    SYSTEM,
    WORKLOAD_KINDS,
    ContainerSpec,
    HealthCheck,
    container_specs,
    cpu_quantity,
    expand_references,
    memory_quantity,
    render_manifests,
    size_bytes,
)
from coded_invnet.tools.containers.system import (
    RunningSystem,
    down,
    healthy,
    is_running,
    iter_commands,
    kill,
    logs_tail,
    restart,
    running,
    system_containers,
    up,
    wait_healthy,
)

__all__ = [
    "BACKEND_PORTS_FROM",
    "BASE_IMAGE_SCRIPT",
    "BUILD_DIR",
    "ContainerError",
    "ContainerSpec",
    "Engine",
    "GRPC_PROBE_COMMAND",
    "HEALTH_COMMAND_START_S",
    "HealthCheck",
    "IMAGE_REPOSITORY",
    "KUSTOMIZATION",
    "LOCAL_BASE_IMAGE",
    "LOOPBACK",
    "PART_OF_LABEL",
    "PODMAN_CONF",
    "POD_LABEL",
    "ROOT",
    "RunningSystem",
    "SYSTEM",
    "WORKLOAD_KINDS",
    "build_images",
    "container_specs",
    "cpu_quantity",
    "down",
    "expand_references",
    "find_engine",
    "healthy",
    "image_contents_mb",
    "image_name",
    "is_running",
    "iter_commands",
    "kill",
    "logs_tail",
    "main",
    "memory_quantity",
    "podman_environment",
    "project_version",
    "render_manifests",
    "restart",
    "running",
    "size_bytes",
    "system_containers",
    "up",
    "wait_healthy",
]
