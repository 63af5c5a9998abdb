"""Chaos runner: keep open-loop load on the frontend and fault data workers every few seconds.

Where a cluster is configured (KUBECONFIG, or running in a pod) it deletes worker pods through the
Kubernetes API and loads the frontend at --target; otherwise it launches the system locally and SIGKILLs
worker processes, restarting each (as Kubernetes would reschedule the pod). `--at-once N` faults N
distinct workers together (with `--parities` r ≥ N and a pool of k + r workers, N members of every
group); `--fault stop` (local) SIGSTOPs them for `--stop-for` seconds instead: stragglers that hang with
their connections open. It reports sent, answered, lost (must be 0), killed, reconstructed and
reconstructed_accuracy (true-label accuracy) and agreement / reconstructed_agreement (with the base model
of --model-dir), and writes them with the command and the machine's load:

    python -m coded_invnet.tools.chaos --duration 60 --out results/chaos.json
    python -m coded_invnet.tools.chaos --k 10 --parities 2 --at-once 2 --out results/chaos-r2.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from coded_invnet.client import AsyncClient, TlsOptions
from coded_invnet.data import load_dataset
from coded_invnet.serving.config import ServingConfig
from coded_invnet.tools.base_model import base_predictions_if_present
from coded_invnet.tools.openloop import (
    add_tls_arguments,
    poisson_schedule,
    run_open_loop,
    summarize,
    tls_from_arguments,
)

IN_CLUSTER_ENV = "KUBERNETES_SERVICE_HOST"


FAULTS = ("kill", "stop")


class WorkerKiller(Protocol):
    @property
    def slots(self) -> int:
        """How many data workers there are to choose from."""
        ...

    async def kill(self, slots: Sequence[int]) -> list[str]:
        """Kill the workers ``slots`` at once; returns their names."""
        ...


class PodKiller:
    """Deletes worker pods (StatefulSet pods worker-0..worker-{slots-1}) with no grace period; before
    each kill it waits until the previous victims' replacements are Ready (the victims of one kill are
    down together, as many as the PodDisruptionBudget allows)."""

    def __init__(self, core: Any, namespace: str, slots: int, statefulset: str = "worker") -> None:
        self.core = core  # kubernetes.client.CoreV1Api
        self.namespace = namespace
        self.slots = slots
        self.statefulset = statefulset
        self._last_killed: list[str] = []

    def delete_pod(self, slot: int) -> str:
        name = f"{self.statefulset}-{slot}"
        self.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=0, _request_timeout=10)
        return name

    def wait_ready(self, name: str, timeout_s: float = 300.0) -> None:
        from kubernetes.client.exceptions import ApiException

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                pod = self.core.read_namespaced_pod(name, self.namespace, _request_timeout=10)
            except ApiException as error:
                if error.status != 404:  # 404: the StatefulSet has not recreated it yet
                    raise
            else:
                conditions = pod.status.conditions or []
                ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
                if ready and pod.metadata.deletion_timestamp is None:
                    return
            time.sleep(1.0)
        raise TimeoutError(f"pod {name} was not Ready again within {timeout_s:.0f} s")

    async def kill(self, slots: Sequence[int]) -> list[str]:
        for name in self._last_killed:
            await asyncio.to_thread(self.wait_ready, name)
        self._last_killed = [await asyncio.to_thread(self.delete_pod, slot) for slot in slots]
        return self._last_killed


def cluster_pod_killer(namespace: str, slots: int | None = None) -> PodKiller | None:
    """A PodKiller when a cluster is configured (KUBECONFIG or in-cluster), else None."""
    if not (os.environ.get("KUBECONFIG") or os.environ.get(IN_CLUSTER_ENV)):
        return None
    from kubernetes import client, config

    if os.environ.get(IN_CLUSTER_ENV):
        config.load_incluster_config()
    else:
        config.load_kube_config()
    return PodKiller(client.CoreV1Api(), namespace, slots or int(os.environ.get("CODED_K", "10")))


class LauncherKiller:
    """SIGKILLs local worker processes, then starts each again on the same ports, as a replaced pod
    would be; or SIGSTOPs them for a while (stragglers)."""

    def __init__(self, system: Any) -> None:  # coded_invnet.tools.launcher.System
        self._system = system
        self.slots = len(system.workers)
        self._restarts: list[asyncio.Task[None]] = []

    async def kill(self, slots: Sequence[int]) -> list[str]:
        await (
            self.wait_restarted()
        )  # the victims of one kill down together, as the PodDisruptionBudget allows
        victims = [self._system.workers[slot] for slot in slots]
        for worker in victims:
            worker.kill()
        for worker in victims:
            self._restarts.append(asyncio.create_task(asyncio.to_thread(self._system.restart, worker.name)))
        return [str(worker.name) for worker in victims]

    async def stop(self, slots: Sequence[int], seconds: float) -> list[str]:
        """SIGSTOP the workers ``slots`` together, SIGCONT them ``seconds`` later (in the background)."""
        await self.wait_restarted()
        victims = [self._system.workers[slot] for slot in slots]
        for worker in victims:
            worker.pause()

        async def resume() -> None:
            await asyncio.sleep(seconds)
            for worker in victims:
                worker.resume()

        self._restarts.append(asyncio.create_task(resume()))
        return [str(worker.name) for worker in victims]

    async def wait_restarted(self) -> None:
        await asyncio.gather(*self._restarts)


@dataclass(frozen=True)
class ChaosPlan:
    duration_s: float
    rate_qps: float
    kill_every_s: float
    timeout_s: float
    seed: int
    at_once: int = 1  # workers faulted together
    fault: str = FAULTS[0]
    stop_s: float = 2.0  # how long a stopped worker hangs (fault "stop")


async def run_chaos(
    killer: WorkerKiller,
    target: str,
    model_name: str,
    dataset: str,
    plan: ChaosPlan,
    tls: TlsOptions | None = None,
    model_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Load `target` for plan.duration_s while faulting plan.at_once random distinct workers every
    plan.kill_every_s; agreement is measured against `model_dir`'s base model (None: not measured)."""
    test = load_dataset(dataset).test
    schedule = poisson_schedule(plan.rate_qps, plan.duration_s, plan.seed)
    base = None if model_dir is None else base_predictions_if_present(model_dir, test.images, len(schedule))
    chooser = random.Random(plan.seed)
    killed: list[str] = []
    async with AsyncClient(target, model_name, plan.timeout_s, tls) as client:
        queries = run_open_loop(client.predict, test.images, test.labels, schedule, plan.timeout_s, base)
        load = asyncio.create_task(queries)
        start = time.perf_counter()
        for due in np.arange(plan.kill_every_s, plan.duration_s, plan.kill_every_s):
            await asyncio.sleep(max(0.0, start + due - time.perf_counter()))
            slots = chooser.sample(range(killer.slots), plan.at_once)
            if plan.fault == "stop":
                if not isinstance(killer, LauncherKiller):
                    raise ValueError("--fault stop needs the local launcher (SIGSTOP of a process)")
                killed += await killer.stop(slots, plan.stop_s)
            else:
                killed += await killer.kill(slots)
        outcomes = await load
    return {
        **summarize(outcomes, plan.duration_s),
        "fault": plan.fault,
        "at_once": plan.at_once,
        "killed": len(killed),
        "killed_workers": killed,
    }


async def run_local(args: argparse.Namespace, plan: ChaosPlan) -> dict[str, Any]:
    from coded_invnet.tools.launcher import launch

    with launch(
        args.model_dir,
        args.mode,
        args.k,
        log_dir=args.log_dir,
        parities=args.parities,
        pool_size=args.pool_size,
        frontend_settings={"straggler_timeout_ms": args.straggler_timeout_ms},
    ) as system:
        killer = LauncherKiller(system)
        target = system.frontend.target
        report = await run_chaos(killer, target, args.model, args.dataset, plan, model_dir=args.model_dir)
        await killer.wait_restarted()
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m coded_invnet.tools.chaos", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--kill-every", type=float, default=10.0, help="seconds between worker kills")
    parser.add_argument("--rate", type=float, default=40.0, help="mean queries per second (Poisson)")
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline of each query (s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/chaos.json"))
    parser.add_argument("--model", default="mnist", help="model name on the frontend")
    parser.add_argument("--dataset", default="mnist", help="test set the queries (and labels) come from")
    parser.add_argument("--at-once", type=int, default=1, help="workers faulted together")
    parser.add_argument(
        "--fault", default=FAULTS[0], choices=FAULTS, help="kill: SIGKILL; stop: SIGSTOP (local)"
    )
    parser.add_argument("--stop-for", type=float, default=2.0, help="seconds a stopped worker hangs")
    cluster = parser.add_argument_group("cluster (used when KUBECONFIG is set or in a pod)")
    cluster.add_argument("--target", default="frontend:8001", help="frontend host:port")
    cluster.add_argument("--namespace", default="coded-invnet")
    cluster.add_argument(
        "--pool-size",
        type=int,
        default=None,
        help="worker pods to choose from: worker-0 ... (default: k); local: pool workers (default: k + r)",
    )
    add_tls_arguments(cluster)
    local = parser.add_argument_group("local (otherwise): the launcher's system")
    # cluster runs read it too, for agreement only (the served model's copy; the chaos image has it)
    local.add_argument("--model-dir", default="models/mnist", help="the served models (worker.onnx)")
    local.add_argument("--mode", default="coded-invnet")
    local.add_argument("--k", type=int, default=int(os.environ.get("CODED_K", "10")))
    local.add_argument("--log-dir", default=None, help="service logs (default: a temporary folder)")
    local.add_argument("--parities", type=int, default=1, help="r parity batches per group")
    local.add_argument(
        "--straggler-timeout-ms",
        type=float,
        default=ServingConfig().straggler_timeout_ms,
        help="the frontend's",
    )
    args = parser.parse_args(argv)
    plan = ChaosPlan(
        args.duration,
        args.rate,
        args.kill_every,
        args.timeout,
        args.seed,
        args.at_once,
        args.fault,
        args.stop_for,
    )
    started, load_at_start = time.time(), os.getloadavg()[0]

    pod_killer = cluster_pod_killer(args.namespace, args.pool_size or args.k)
    if pod_killer is not None:
        tls = tls_from_arguments(args)
        report = asyncio.run(
            run_chaos(pod_killer, args.target, args.model, args.dataset, plan, tls, args.model_dir)
        )
        report["where"] = f"kubernetes namespace {args.namespace}"
    else:
        report = asyncio.run(run_local(args, plan))
        report["where"] = f"local launcher, mode {args.mode}, k={args.k}, r={args.parities}"
    report["wall_s"] = round(time.time() - started, 1)
    # the machine is shared: its load explains noise in the tails
    report["load_average_1m_start_end"] = [round(load_at_start, 2), round(os.getloadavg()[0], 2)]
    report["cpu_cores"] = os.cpu_count()
    arguments = sys.argv[1:] if argv is None else list(argv)
    report["command"] = shlex.join(["python", "-m", "coded_invnet.tools.chaos", *arguments])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    if report["lost"]:
        raise SystemExit(f"{report['lost']} queries lost")


if __name__ == "__main__":
    main()
