"""Side-by-side tail-latency benchmark: coding modes x k x faults under the same open-loop Poisson load.

For each (mode, k) it launches the system locally and runs the fault phases, interleaved in --rounds
rounds, each round with the same Poisson load (seeded, so every mode sees the same arrivals):
  none       no faults;
  straggler  data worker 0 delays a batch by 100 ms with probability 0.1 (its admin RPC, as in the paper);
  kill       data worker 0 is SIGKILLed a third of the way into the round and restarted on the same port;
  straggler2, kill2  the same for workers 0 and 1 together (with --parities 2: two members of each group,
             the pool being k + 2 workers).
With --parities r each group carries r parity batches (coded-invnet; other modes keep theirs). It
writes results/latency.json (a list of records), results/latency.meta.json (the command, the settings
and the machine's load) and results/latency.png.

    python -m coded_invnet.tools.bench --out results/latency.json
    python -m coded_invnet.tools.bench --modes coded-invnet --ks 10 --parities 2 \\
        --faults none,kill2,straggler2 --out results/latency-r2.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from coded_invnet.client import AsyncClient
from coded_invnet.coding import CODING_MODES
from coded_invnet.data import Split, load_dataset
from coded_invnet.proto import coded_pb2, coded_pb2_grpc
from coded_invnet.serving.config import DECODABLE_MODES, MULTI_PARITY_MODES, default_model_file
from coded_invnet.tools.base_model import base_predictions
from coded_invnet.tools.chaos import LauncherKiller
from coded_invnet.tools.faults import ADMIN_TIMEOUT_S, STRAGGLER_DELAY_MS, STRAGGLER_PROBABILITY, straggler
from coded_invnet.tools.launcher import System, launch
from coded_invnet.tools.openloop import (
    Outcome,
    most_requests,
    percentile_ms,
    poisson_schedule,
    run_open_loop,
    summarize,
)

FAULTS = ("none", "straggler", "kill")
TWO_FAULTS = ("straggler2", "kill2")  # the same faults on two workers at once (for r >= 2)
RECONNECT_SETTLE_S = 2.0
INFERENCES = "nv_inference_count"  # queries run through a model, per process (Prometheus counter)


@dataclass(frozen=True)
class BenchPlan:
    rate_qps: float
    duration_s: float
    timeout_s: float
    straggler_delay_ms: float
    straggler_probability: float
    straggler_timeout_ms: float
    kill_at_fraction: float
    seed: int
    rounds: int
    parity_niceness: int
    parities: int = 1


def scrape_inferences(system: System) -> dict[str, float]:
    """Queries each model process has run so far (its nv_inference_count), by service name."""
    counts = {}
    for name, service in system.services.items():
        if name == "frontend" or not service.alive():
            continue
        url = f"http://127.0.0.1:{service.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        counts[name] = sum(
            sample.value
            for family in text_string_to_metric_families(text)
            if family.name == INFERENCES
            for sample in family.samples
            if sample.name == INFERENCES + "_total"
        )
    return counts


def worker_rows(system: System, before: dict[str, float], after: dict[str, float]) -> float:
    """Rows the data and parity workers ran between two scrapes (padding and replicas included)."""
    workers = [w.name for w in system.workers] + ([system.parity_worker.name] if system.parity_worker else [])
    return sum(after.get(name, 0.0) - before.get(name, 0.0) for name in workers)


async def set_faults(target: str, faults: coded_pb2.FaultConfig) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        await coded_pb2_grpc.WorkerStub(channel).SetFaults(faults, timeout=ADMIN_TIMEOUT_S)


@dataclass
class FaultTally:
    """What the rounds of one fault phase add up to."""

    outcomes: list[Outcome] = field(default_factory=list)
    rows: float = 0.0
    duration_s: float = 0.0


async def run_round(
    system: System,
    fault: str,
    test: Split,
    base: np.ndarray,
    plan: BenchPlan,
    seed: int,
    tally: FaultTally,
) -> None:
    """One round of one fault's open-loop load against the running system, added to ``tally``; ``base`` is
    the base model's class of each test image (for agreement)."""
    victims = system.workers[: 2 if fault in TWO_FAULTS else 1]
    kind = fault.rstrip("2")
    if kind == "straggler":
        for n, victim in enumerate(victims):
            delay = straggler(plan.straggler_delay_ms, plan.straggler_probability, seed + 1 + n)
            await set_faults(victim.target, delay)
    duration_s = plan.duration_s / plan.rounds
    before = await asyncio.to_thread(scrape_inferences, system)
    killer = LauncherKiller(system)
    async with AsyncClient(system.frontend.target, timeout_s=plan.timeout_s) as client:
        schedule = poisson_schedule(plan.rate_qps, duration_s, seed)
        load = asyncio.create_task(
            run_open_loop(client.predict, test.images, test.labels, schedule, plan.timeout_s, base)
        )
        if kind == "kill":
            await asyncio.sleep(duration_s * plan.kill_at_fraction)
            before_kill = await asyncio.to_thread(scrape_inferences, system)
            await killer.kill(range(len(victims)))
        tally.outcomes += await load
    await killer.wait_restarted()
    if kind == "kill":
        # the frontend reconnects to the restarted worker within its 1 s reconnect backoff: let it, so the
        # after-effects of this kill do not land in the next round's phases
        await asyncio.sleep(RECONNECT_SETTLE_S)
    after = await asyncio.to_thread(scrape_inferences, system)
    if kind == "kill":  # the restarted workers count from 0 again
        for victim in victims:
            after[victim.name] += before_kill[victim.name]
    if kind == "straggler":
        for victim in victims:
            await set_faults(victim.target, coded_pb2.FaultConfig())
    tally.rows += worker_rows(system, before, after)
    tally.duration_s += duration_s


def record(system: System, fault: str, tally: FaultTally, parities: int) -> dict[str, Any]:
    summary = summarize(tally.outcomes, tally.duration_s)
    answered = max(int(summary["answered"] or 0), 1)
    # the tail of the answers that came straight from their worker: does a fault slow those too?
    direct = np.array([o.latency_ms for o in tally.outcomes if o.code == "OK" and not o.reconstructed])
    return {
        "mode": system.mode,
        "k": system.k,
        **({"r": parities} if parities > 1 else {}),
        "fault": fault,
        **{key: summary[key] for key in ("p50_ms", "p99_ms", "p999_ms", "throughput_qps")},
        "p99_ms_not_reconstructed": percentile_ms(direct, 99),
        "p999_ms_not_reconstructed": percentile_ms(direct, 99.9),
        "accuracy": summary["accuracy"],  # true-label accuracy
        "agreement": summary["agreement"],  # with the base model's own answers
        "reconstructed_agreement": summary["reconstructed_agreement"],
        "reconstructed_fraction": round(int(summary["reconstructed"] or 0) / answered, 4),
        # worker rows beyond one per answered query (parity, replicas, padding); encoder/decoder not counted
        "extra_compute": round(tally.rows / answered - 1.0, 4),
        "sent": summary["sent"],
        "lost": summary["lost"],
    }


def missing_models(model_dir: Path, mode: str, k: int, parities: int = 1) -> list[str]:
    """The ONNX files a launch of (mode, k) with r parities would need that model_dir lacks."""
    services = [("worker", "data")]
    if mode in DECODABLE_MODES:
        services += [("worker", "parity"), ("encoder", ""), ("decoder", "")]
    r = parities if mode in MULTI_PARITY_MODES else 1
    needed = {default_model_file(service, mode, role, k, r) for service, role in services}
    return sorted(name for name in needed if not (model_dir / name).is_file())


async def run_bench(
    model_dir: Path,
    modes: Sequence[str],
    ks: Sequence[int],
    faults: Sequence[str],
    plan: BenchPlan,
    dataset: str,
) -> list[dict[str, Any]]:
    """Every (k, mode) on a fresh system; its fault phases interleaved in rounds so a passing stall of the
    machine is shared by all faults rather than landing on one. The same seeds (load) for every mode."""
    test = load_dataset(dataset).test
    round_requests = most_requests(plan.rate_qps, plan.duration_s / plan.rounds)
    base = base_predictions(model_dir, test.images, round_requests)
    records = []
    for k in ks:
        for mode in modes:
            parities = plan.parities if mode in MULTI_PARITY_MODES else 1
            if missing := missing_models(model_dir, mode, k, parities):
                print(f"skipping mode {mode} k={k}: {model_dir} lacks {', '.join(missing)}", flush=True)
                continue
            # "none" waits for all k batches: only failed batches are re-sent, stragglers are not hedged
            straggler_timeout_ms = plan.timeout_s * 1e3 if mode == "none" else plan.straggler_timeout_ms
            settings = {"straggler_timeout_ms": straggler_timeout_ms}
            with launch(
                model_dir,
                mode,
                k,
                frontend_settings=settings,
                parity_niceness=plan.parity_niceness,
                parities=parities,
                fault_api=True,  # the straggler phase delays a worker through SetFaults
            ) as system:
                # warm-up: connections, caches, onnxruntime's first runs
                await run_round(system, "none", test, base, plan, plan.seed, FaultTally())
                tallies = {fault: FaultTally() for fault in faults}
                for round_index in range(plan.rounds):
                    for fault in faults:
                        await run_round(
                            system, fault, test, base, plan, plan.seed + round_index, tallies[fault]
                        )
                for fault in faults:
                    records.append(record(system, fault, tallies[fault], parities))
                    print(json.dumps(records[-1]), flush=True)
    return records


def plot(records: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    faults = list(dict.fromkeys(r["fault"] for r in records))
    modes = list(dict.fromkeys(r["mode"] for r in records))
    ks = sorted({r["k"] for r in records}, reverse=True)
    figure, axes = plt.subplots(1, len(faults), figsize=(5 * len(faults), 4), sharey=True, squeeze=False)
    width = 0.8 / len(ks)
    for axis, fault in zip(axes[0], faults, strict=True):
        for j, k in enumerate(ks):
            values = [
                next(
                    (r["p999_ms"] for r in records if (r["mode"], r["k"], r["fault"]) == (m, k, fault)),
                    np.nan,
                )
                for m in modes
            ]
            axis.bar(np.arange(len(modes)) + j * width, values, width, label=f"k={k}")
        axis.set_xticks(np.arange(len(modes)) + width * (len(ks) - 1) / 2, modes)
        axis.set_title(f"fault: {fault}")
        axis.set_yscale("log")
    axes[0][0].set_ylabel("p99.9 latency (ms)")
    axes[0][-1].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m coded_invnet.tools.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, default=Path("results/latency.json"))
    parser.add_argument("--model-dir", type=Path, default=Path("models/mnist"))
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--modes", default=",".join(CODING_MODES))
    parser.add_argument("--ks", default="10,4,2", help="comma-separated k values")
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"of {', '.join(FAULTS + TWO_FAULTS)}")
    parser.add_argument("--parities", type=int, default=1, help="r parity batches per group (coded-invnet)")
    parser.add_argument("--rate", type=float, default=100.0, help="mean queries per second (Poisson)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per fault (all rounds)")
    parser.add_argument("--rounds", type=int, default=4, help="fault phases interleaved in this many rounds")
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline of each query (s)")
    parser.add_argument("--straggler-delay-ms", type=float, default=STRAGGLER_DELAY_MS)
    parser.add_argument("--straggler-probability", type=float, default=STRAGGLER_PROBABILITY)
    parser.add_argument(
        "--straggler-timeout-ms", type=float, default=20.0, help="frontend's wait before decoding"
    )
    parser.add_argument("--kill-at", type=float, default=1 / 3, help="kill at this fraction of a phase")
    parser.add_argument("--seed", type=int, default=0)
    # The parity path decides the straggler tail: by default it gets the same CPU priority as the data path.
    parser.add_argument("--parity-niceness", type=int, default=0, help="nice level, parity path")
    args = parser.parse_args(argv)
    plan = BenchPlan(
        args.rate,
        args.duration,
        args.timeout,
        args.straggler_delay_ms,
        args.straggler_probability,
        args.straggler_timeout_ms,
        args.kill_at,
        args.seed,
        args.rounds,
        args.parity_niceness,
        args.parities,
    )
    started, load_at_start = time.time(), os.getloadavg()[0]
    ks = [int(k) for k in args.ks.split(",")]
    records = asyncio.run(
        run_bench(args.model_dir, args.modes.split(","), ks, args.faults.split(","), plan, args.dataset)
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(records, indent=1) + "\n")
    arguments = sys.argv[1:] if argv is None else list(argv)
    meta = {
        "command": shlex.join(["python", "-m", "coded_invnet.tools.bench", *arguments]),
        "plan": asdict(plan),
        "wall_s": round(time.time() - started, 1),
        # the machine is shared (e.g. model training): its load explains noise in the tails
        "load_average_1m_start_end": [round(load_at_start, 2), round(os.getloadavg()[0], 2)],
        "cpu_cores": os.cpu_count(),
        "skipped": [
            f"{mode} k={k}: no {', '.join(missing)}"
            for k in ks
            for mode in args.modes.split(",")
            if (missing := missing_models(args.model_dir, mode, k, plan.parities))
        ],
        "records": str(args.out),
    }
    args.out.with_suffix(".meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    plot(records, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
