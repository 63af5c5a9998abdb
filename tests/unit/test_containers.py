"""The containers `make up` starts are the rendered k8s/ manifests' pods, on loopback.

These checks need only kubectl (to render); no container engine. Building and running the containers is
`make test-containers` (python -m coded_invnet.tools.container_chaos smoke), which CI runs after `make test`.
"""

from __future__ import annotations

import functools
import re
import shutil
from typing import Any

import pytest
from helpers import REPO_ROOT

from coded_invnet.serving.config import load_config
from coded_invnet.tools.chaos import ChaosPlan
from coded_invnet.tools.container_chaos import SINGLE_COMPONENTS, chaos_kills
from coded_invnet.tools.containers import (
    LOOPBACK,
    PODMAN_CONF,
    ContainerSpec,
    Engine,
    container_specs,
    expand_references,
    image_name,
    memory_quantity,
    render_manifests,
)

ROOT = REPO_ROOT


@functools.cache
def manifests() -> tuple[dict[str, Any], ...]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (it renders kustomizations offline)")
    return tuple(render_manifests(ROOT / "k8s"))


@functools.cache
def specs() -> dict[str, ContainerSpec]:
    return {spec.name: spec for spec in container_specs(list(manifests()))}


def workload(name: str) -> dict[str, Any]:
    (match,) = [
        doc
        for doc in manifests()
        if doc["kind"] in ("Deployment", "StatefulSet") and doc["metadata"]["name"] == name
    ]
    return match


def test_one_container_per_pod_with_the_manifests_image_and_command() -> None:
    pool_size = workload("worker")["spec"]["replicas"]
    assert set(specs()) == {f"worker-{i}" for i in range(pool_size)} | {"encoder", "decoder", "frontend"}
    for spec in specs().values():
        (container,) = workload(re.sub(r"-\d+$", "", spec.name))["spec"]["template"]["spec"]["containers"]
        assert spec.argv == (*container["command"], *container.get("args", []))
        assert spec.image == container["image"] == image_name("serving")


def test_security_settings_come_from_the_manifests() -> None:
    for spec in specs().values():
        args = spec.run_args(Engine("podman"))
        assert args[args.index("--user") + 1] == "10001:10001"
        assert "--read-only" in args and "--read-only-tmpfs=false" in args
        assert args[args.index("--cap-drop") + 1] == "ALL"
        assert args[args.index("--security-opt") + 1] == "no-new-privileges"
        assert args[args.index("--tmpfs") + 1] == "/tmp:rw,mode=1777,size=67108864"
        assert args[args.index("--network") + 1] == "host"
        assert spec.memory in ("256m", "512m") and spec.health is not None


def test_env_follows_the_kubelet_and_addresses_point_at_loopback_ports() -> None:
    all_specs = specs()
    ports = [port for spec in all_specs.values() for port in (spec.port, spec.metrics_port)]
    assert len(ports) == len(set(ports)), "two containers share a host port"
    frontend = all_specs["frontend"]
    environ = dict(frontend.env)
    assert frontend.target == f"{LOOPBACK}:8001"
    config = load_config("frontend", [], environ)
    assert config.host == LOOPBACK
    pool = sorted((spec for spec in all_specs.values() if spec.component == "worker"), key=lambda s: s.port)
    assert config.workers == tuple(spec.target for spec in pool) and len(pool) > config.k  # a static pool
    assert not config.parity_worker
    assert (config.encoder, config.decoder) == (all_specs["encoder"].target, all_specs["decoder"].target)
    worker = load_config("worker", [], {k: v for k, v in all_specs["worker-0"].env if k != "CODED_WORKERS"})
    assert worker.role == "pool"  # the StatefulSet's own env
    assert f"{LOOPBACK}:{worker.port}" == all_specs["worker-0"].target


def test_kubelet_quantities_and_references() -> None:
    assert memory_quantity("512Mi") == "512m" and memory_quantity("1Gi") == "1g"
    assert expand_references("--namespace $(POD_NAMESPACE) $$(KEPT)", {"POD_NAMESPACE": "x"}) == (
        "--namespace x $(KEPT)"
    )
    assert 'runtime = "runc"' in PODMAN_CONF and "nofile=20000:20000" in PODMAN_CONF


def test_chaos_kills_each_single_component_once() -> None:
    kills = chaos_kills(ChaosPlan(duration_s=60, rate_qps=40, kill_every_s=5, timeout_s=10, seed=0))
    components = [kill.component for kill in kills]
    assert len(kills) == 11 and all(0 < kill.due_s < 60 for kill in kills)
    assert all(components.count(component) == 1 for component in SINGLE_COMPONENTS)
    assert components.count("worker") == len(kills) - len(SINGLE_COMPONENTS)
