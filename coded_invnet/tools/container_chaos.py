"""Chaos against the system running as containers (coded_invnet.tools.containers): open-loop load on the
frontend while containers are SIGKILLed and started again, one at a time.

    python -m coded_invnet.tools.container_chaos chaos --duration 60 --out results/chaos-containers.json
    python -m coded_invnet.tools.container_chaos smoke --out results/containers.json   (make test-containers)

`chaos` kills a random pool-worker container every --kill-every seconds and, once each, the encoder and
the decoder; each victim is started again at once and must pass its health
check before the next kill (one pod down at a time, as the PodDisruptionBudget allows). `smoke` is the CI
test: build the images, start the system, answer through the SDK and an unmodified tritonclient, kill
one data worker under load, stop the system, and report image sizes, seconds to healthy and
sent/answered/lost with true-label accuracy and agreement with the base model (--model-dir's worker.onnx,
the models the images were built from). Both exit non-zero when a query is lost.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coded_invnet.client import AsyncClient, Client
from coded_invnet.data import load_dataset
from coded_invnet.tools.base_model import base_predictions_if_present
from coded_invnet.tools.chaos import ChaosPlan
from coded_invnet.tools.containers import (
    ContainerError,
    ContainerSpec,
    RunningSystem,
    build_images,
    find_engine,
    image_contents_mb,
    image_name,
    kill,
    restart,
    running,
    wait_healthy,
)
from coded_invnet.tools.openloop import poisson_schedule, run_open_loop, summarize

# The coding path's single points, each killed once in a chaos run (the pool workers at random otherwise).
SINGLE_COMPONENTS = ("encoder", "decoder")
RESTART_TIMEOUT_S = 120.0

# tritonclient and our SDK both register a protobuf package named `inference`: one process each.
TRITON_PROBE = r"""
import io, json, sys
import numpy as np
import tritonclient.grpc as triton

target, model = sys.argv[1:]
client = triton.InferenceServerClient(target)
image = np.load(io.BytesIO(sys.stdin.buffer.read()))
inputs = [triton.InferInput("x", list(image.shape), "FP32")]
inputs[0].set_data_from_numpy(image)
result = client.infer(model, inputs, outputs=[triton.InferRequestedOutput("class")])
label = int(result.as_numpy("class").reshape(-1)[0])
print(json.dumps({"ready": client.is_model_ready(model), "label": label}))
"""


@dataclass(frozen=True)
class Kill:
    due_s: float  # seconds after the load starts
    component: str  # app.kubernetes.io/component of the victim; "worker" picks a random pool worker


def chaos_kills(plan: ChaosPlan) -> list[Kill]:
    """A pool worker every plan.kill_every_s; the encoder and decoder once each, as the 2nd and 4th
    kills: early, because on a busy host restarts outlast the interval and push later kills
    past the end of the load."""
    dues = [float(due) for due in np.arange(plan.kill_every_s, plan.duration_s, plan.kill_every_s)]
    components = ["worker"] * len(dues)
    if len(dues) >= 2 * len(SINGLE_COMPONENTS):
        for i, component in enumerate(SINGLE_COMPONENTS):
            components[2 * i + 1] = component
    return [Kill(due, component) for due, component in zip(dues, components, strict=True)]


async def kill_and_restart(system: RunningSystem, victim: ContainerSpec) -> float:
    """SIGKILL the container, start it again, wait until it is healthy; returns the seconds that took."""
    started = time.perf_counter()
    await asyncio.to_thread(kill, system.engine, victim)
    await asyncio.to_thread(restart, system.engine, victim)
    await asyncio.to_thread(wait_healthy, system.engine, [victim.name], RESTART_TIMEOUT_S)
    return round(time.perf_counter() - started, 2)


async def load_with_kills(
    system: RunningSystem,
    kills: Sequence[Kill],
    plan: ChaosPlan,
    model: str,
    dataset: str,
    model_dir: str | Path,
) -> dict[str, Any]:
    test = load_dataset(dataset).test
    schedule = poisson_schedule(plan.rate_qps, plan.duration_s, plan.seed)
    base = base_predictions_if_present(model_dir, test.images, len(schedule))
    chooser = random.Random(plan.seed)
    killed: list[str] = []
    killed_at_s: list[float] = []
    recovered_s: list[float] = []
    async with AsyncClient(system.frontend.target, model, plan.timeout_s) as client:
        load = asyncio.create_task(
            run_open_loop(client.predict, test.images, test.labels, schedule, plan.timeout_s, base)
        )
        start = time.perf_counter()
        for planned in kills:
            await asyncio.sleep(max(0.0, start + planned.due_s - time.perf_counter()))
            if time.perf_counter() - start > plan.duration_s - 1:
                break  # restarts ran late: a kill now would come after the load
            victim = chooser.choice(system.of_component(planned.component))
            killed.append(victim.name)
            killed_at_s.append(round(time.perf_counter() - start, 2))
            recovered_s.append(await kill_and_restart(system, victim))
        outcomes = await load
    return {
        **summarize(outcomes, plan.duration_s),
        "killed": len(killed),
        "killed_workers": killed,
        "killed_at_s": killed_at_s,  # after the load started; it ran plan.duration_s
        "healthy_again_s": recovered_s,
    }


def answers_through_clients(system: RunningSystem, model: str, dataset: str) -> dict[str, Any]:
    """One query through the SDK and one through an unmodified tritonclient, both at the frontend."""
    test = load_dataset(dataset).test
    image, label = test.images[:1].astype(np.float32), int(test.labels[0])
    with Client(system.frontend.target, model=model, timeout_s=10) as client:
        sdk_label = client.predict(image[0]).label
    buffer = _npy_bytes(image)
    probe = subprocess.run(
        [sys.executable, "-c", TRITON_PROBE, system.frontend.target, model],
        input=buffer,
        capture_output=True,
        timeout=60,
    )
    if probe.returncode != 0:
        raise ContainerError(f"tritonclient failed:\n{probe.stderr.decode()[-3000:]}")
    triton = json.loads(probe.stdout)
    return {"label": label, "sdk_label": sdk_label, "tritonclient_label": triton["label"]}


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]}


def smoke(args: argparse.Namespace) -> dict[str, Any]:
    engine = find_engine()
    report: dict[str, Any] = {"machine_before": machine()}
    started = time.perf_counter()
    report["build"] = build_images(engine, base_image=args.base_image)
    report["build"]["total_s"] = round(time.perf_counter() - started, 1)
    report["serving_image_contents_mb"] = image_contents_mb(
        engine, image_name("serving"), ["/opt/venv", "/app/models", "/app/coded_invnet", "/app/services"]
    )
    plan = ChaosPlan(args.duration, args.rate, args.duration / 2, args.timeout, args.seed)
    with running(engine) as system:
        report["containers"] = len(system.specs)
        report["seconds_to_healthy"] = system.seconds_to_healthy
        report["frontend"] = system.frontend.target
        report["clients"] = answers_through_clients(system, args.model, args.dataset)
        report["load"] = asyncio.run(
            load_with_kills(
                system, [Kill(args.duration / 2, "worker")], plan, args.model, args.dataset, args.model_dir
            )
        )
    report["machine_after"] = machine()
    clients = report["clients"]
    report["passed"] = report["load"]["lost"] == 0 and clients["sdk_label"] == clients["tritonclient_label"]
    return report


def chaos(args: argparse.Namespace) -> dict[str, Any]:
    engine = find_engine()
    plan = ChaosPlan(args.duration, args.rate, args.kill_every, args.timeout, args.seed)
    report: dict[str, Any] = {"machine_before": machine()}
    with running(engine) as system:
        kills = chaos_kills(plan)
        result = asyncio.run(load_with_kills(system, kills, plan, args.model, args.dataset, args.model_dir))
        seconds_to_healthy = system.seconds_to_healthy
    return {
        **result,
        "where": f"{len(system.specs)} {engine.name} containers from k8s/ on one host (host network)",
        "seconds_to_healthy": seconds_to_healthy,
        **report,
        "machine_after": machine(),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m coded_invnet.tools.container_chaos", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="action", required=True)
    run = commands.add_parser("chaos", help="kill containers every few seconds under load")
    run.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    run.add_argument("--kill-every", type=float, default=5.0, help="seconds between kills")
    run.add_argument("--out", type=Path, default=Path("results/chaos-containers.json"))
    test = commands.add_parser("smoke", help="build, up, one kill under load, down (make test-containers)")
    test.add_argument("--duration", type=float, default=20.0, help="seconds of load; the kill is midway")
    test.add_argument("--base-image", default=None, help="default: made from Debian packages")
    test.add_argument("--out", type=Path, default=Path("results/containers.json"))
    for command in (run, test):
        command.add_argument("--rate", type=float, default=40.0, help="mean queries per second (Poisson)")
        command.add_argument("--timeout", type=float, default=10.0, help="deadline of each query (s)")
        command.add_argument("--seed", type=int, default=0)
        command.add_argument("--model", default="mnist", help="model name on the frontend")
        command.add_argument("--dataset", default="mnist", help="test set the queries come from")
        command.add_argument(
            "--model-dir", default="models/mnist", help="the served models (for agreement with worker.onnx)"
        )
    args = parser.parse_args(argv)

    try:
        report = smoke(args) if args.action == "smoke" else chaos(args)
    except ContainerError as error:
        sys.exit(str(error))
    arguments = sys.argv[1:] if argv is None else list(argv)
    report["command"] = shlex.join(["python", "-m", "coded_invnet.tools.container_chaos", *arguments])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    lost = report["load"]["lost"] if args.action == "smoke" else report["lost"]
    if lost or not report.get("passed", True):
        raise SystemExit(f"{lost} queries lost" if lost else "the clients' answers differ")


if __name__ == "__main__":
    main()
