"""The container engine (docker or podman) and the images `make image` builds.

The engine is docker when its daemon answers, else podman. For podman the host settings this kind of
machine needs live in a containers.conf written under build/ (CONTAINERS_CONF): pinned ulimits (no
CAP_SYS_RESOURCE to raise them) and the runc runtime.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
BUILD_DIR = ROOT / "build"
IMAGE_REPOSITORY = "localhost/coded-invnet"
LOCAL_BASE_IMAGE = "localhost/coded-invnet-base:bookworm-py3.11"
BASE_IMAGE_SCRIPT = ROOT / "scripts" / "base-image.sh"

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
