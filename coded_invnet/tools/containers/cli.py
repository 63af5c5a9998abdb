"""The command line: python -m coded_invnet.tools.containers build|up|down (make image, up, down)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import coded_invnet.tools.containers as package
from coded_invnet.tools.containers.engine import (
    LOCAL_BASE_IMAGE,
    ContainerError,
    Engine,
    build_images,
    find_engine,
)
from coded_invnet.tools.containers.manifests import KUSTOMIZATION, container_specs, render_manifests
from coded_invnet.tools.containers.system import down, iter_commands, up


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m coded_invnet.tools.containers", description=package.__doc__.split("\n")[0]
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
