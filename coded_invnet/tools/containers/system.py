"""`up` and `down`: the manifests' pods as running containers, until each passes its health check."""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from coded_invnet.tools.containers.engine import ContainerError, Engine
from coded_invnet.tools.containers.manifests import (
    KUSTOMIZATION,
    PART_OF_LABEL,
    SYSTEM,
    ContainerSpec,
    container_specs,
    render_manifests,
)


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
