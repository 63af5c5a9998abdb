"""The worker pool on the local launcher: workers join, leave and fail under load; throughput vs pool size.

    python -m coded_invnet.tools.scaleout pool --k 4 --out results/pool.json
    python -m coded_invnet.tools.scaleout scale --k 4 --delay-ms 100 --out results/scale.json

`pool`: N = 2(k + r) pool workers and two frontends under open-loop load; while it runs, 3 workers are
added, 3 removed (unlisted, then SIGTERM), 2 killed at random (SIGKILL, still listed: a crash), and the
second frontend is killed once its own load has ended. Reports what each frontend sent and lost, and
the batches each frontend dealt to each worker (its `coded_backend_batches` metric).

`scale`: each worker sleeps a fixed `--delay-ms` per batch and takes one batch at a time (standing for a
slower device: 2 cores cannot show compute scaling), and a closed loop of `--concurrency` requests keeps
the pool saturated; throughput and latency at N = k + r, 2(k + r), 3(k + r).
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
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from coded_invnet.client import AsyncClient
from coded_invnet.data import load_dataset
from coded_invnet.serving.config import ServingConfig
from coded_invnet.tools.base_model import base_predictions
from coded_invnet.tools.launcher import launch
from coded_invnet.tools.openloop import (
    most_requests,
    percentile_ms,
    poisson_schedule,
    run_open_loop,
    summarize,
)
from coded_invnet.tools.system import System

R = ServingConfig().parities  # the runs use the default code: one parity

BATCHES_METRIC = 'coded_backend_batches_total{address="'


def machine_load() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]}


def scrape(metrics_port: int) -> list[str]:
    return (
        urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
        .read()
        .decode()
        .splitlines()
    )


def parity_paths(metrics_port: int) -> dict[str, int]:
    """How many groups ran their parity path (started) or did not need it (skipped)."""
    found: Counter[str] = Counter()
    for line in scrape(metrics_port):
        if line.startswith("coded_parity_path_total{"):
            found[line.split('outcome="')[1].split('"')[0]] += int(float(line.split()[-1]))
    return dict(found)


def batches_by_worker(system: System, metrics_port: int, kind: str = "worker") -> dict[str, int]:
    """The batches one frontend sent to each backend of `kind`, by service name (its Prometheus endpoint)."""
    names = {s.target: name for name, s in system.services.items()}
    counts: Counter[str] = Counter()
    for line in scrape(metrics_port):
        if line.startswith(BATCHES_METRIC) and f'backend="{kind}"' in line:
            address = line.removeprefix(BATCHES_METRIC).split('"')[0]
            counts[names.get(address, address)] += int(float(line.split()[-1]))
    return dict(sorted(counts.items(), key=lambda item: (len(item[0]), item[0])))


def churn(system: System, duration_s: float, seed: int, events: list[dict[str, Any]]) -> dict[str, int]:
    """Add 3 workers, remove 3, kill 2, kill the second frontend, spread over `duration_s` (blocking)."""
    chooser, start = random.Random(seed), time.perf_counter()
    original = [w.name for w in system.workers]

    def at(fraction: float, what: str, act: Callable[[], list[str]]) -> None:
        time.sleep(max(0.0, start + fraction * duration_s - time.perf_counter()))
        began = time.perf_counter() - start
        events.append({"t_s": round(began, 2), "event": what, "services": act()})

    removed = chooser.sample(original, 3)
    killed = chooser.sample([n for n in original if n not in removed], 2)
    second = system.frontends[1]
    counts: dict[str, int] = {}

    def remove() -> list[str]:
        for name in removed:
            system.remove_worker(name)
        return removed

    def kill() -> list[str]:
        for name in killed:
            system.services[name].kill()
        return killed

    def kill_frontend() -> list[str]:
        counts.update(batches_by_worker(system, second.metrics_port))
        second.kill()
        return [second.name]

    at(0.1, "add", lambda: [system.add_worker().name for _ in range(3)])
    at(0.35, "remove (SIGTERM)", remove)
    at(0.55, "kill (SIGKILL)", kill)
    at(0.8, "kill frontend", kill_frontend)  # its own load ended at 0.7
    return counts


async def pool_run(args: argparse.Namespace) -> dict[str, Any]:
    test = load_dataset(args.dataset).test
    base = base_predictions(args.model_dir, test.images, most_requests(args.rate, args.duration))
    pool_size = 2 * (args.k + R)
    events: list[dict[str, Any]] = []
    with launch(
        args.model_dir, args.mode, args.k, pool_size=pool_size, frontends=2, coders=2, log_dir=args.log_dir
    ) as system:
        first, second = system.frontends
        async with (
            AsyncClient(first.target, args.model, args.timeout) as client,
            AsyncClient(second.target, args.model, args.timeout) as other,
        ):
            # the second frontend's load ends before it is killed (its clients would lose their calls)
            main = run_open_loop(
                client.predict, test.images, test.labels,
                poisson_schedule(args.rate, args.duration, args.seed), args.timeout, base,
            )  # fmt: skip
            side = run_open_loop(
                other.predict, test.images, test.labels,
                poisson_schedule(args.rate / 2, 0.7 * args.duration, args.seed + 1), args.timeout, base,
            )  # fmt: skip
            changes = asyncio.to_thread(churn, system, args.duration, args.seed, events)
            outcomes, other_outcomes, second_counts = await asyncio.gather(main, side, changes)
        first_counts = batches_by_worker(system, first.metrics_port)
        coders = {
            kind: batches_by_worker(system, first.metrics_port, kind) for kind in ("encoder", "decoder")
        }
    reports: list[dict[str, Any]] = [
        summarize(outcomes, args.duration),
        summarize(other_outcomes, 0.7 * args.duration),
    ]
    for report, answers in zip(reports, (outcomes, other_outcomes), strict=True):
        report["failures"] = dict(Counter(o.code for o in answers if o.code != "OK"))
        report["failed_at_s"] = [round(o.scheduled_s, 2) for o in answers if o.code != "OK"][:20]
    return {
        "k": args.k,
        "r": R,
        "mode": args.mode,
        "pool_size": pool_size,
        "events": events,
        "frontends": dict(zip([first.name, second.name], reports, strict=True)),
        "sent": sum(int(r["sent"] or 0) for r in reports),
        "lost": sum(int(r["lost"] or 0) for r in reports),
        "worker_batches": {first.name: first_counts, second.name: second_counts},
        "coder_batches": {first.name: coders},  # 2 encoders and 2 decoders, least loaded per call
    }


async def closed_loop(
    target: str, model: str, images: np.ndarray, args: argparse.Namespace
) -> dict[str, Any]:
    """`concurrency` requests of `--images` images each, back to back per slot, for warm-up + duration."""
    latencies: list[float] = []
    sent = lost = 0
    start = time.perf_counter()
    measure_from, end = start + args.warmup, start + args.warmup + args.duration

    async def slot(client: AsyncClient, seed: int) -> None:
        nonlocal sent, lost
        rng = np.random.default_rng(seed)
        while (now := time.perf_counter()) < end:
            batch = images[rng.integers(0, len(images), args.images)]
            measured = now >= measure_from
            try:
                await client.predict_batch(batch, args.timeout)
                if measured:
                    latencies.append((time.perf_counter() - now) * 1e3)
            except grpc.aio.AioRpcError:
                lost += measured * len(batch)
            sent += measured * len(batch)

    clients = [AsyncClient(target, model, args.timeout) for _ in range(args.clients)]
    try:
        await asyncio.gather(*(slot(clients[i % args.clients], i) for i in range(args.concurrency)))
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    answered = np.array(latencies)
    return {
        "throughput_qps": round((sent - lost) / args.duration, 1),
        "p50_ms": percentile_ms(answered, 50),
        "p99_ms": percentile_ms(answered, 99),
        "sent": sent,
        "lost": lost,
    }


async def scale_run(args: argparse.Namespace) -> dict[str, Any]:
    images = load_dataset(args.dataset).test.images
    group = args.k + R
    records = []
    for pool_size in (group, 2 * group, 3 * group):
        workers = {"fault_delay": "fixed", "fault_delay_ms": args.delay_ms, "max_inflight": 1}
        frontend = {
            "max_batch": args.max_batch,
            "straggler_timeout_ms": args.straggler_ms,
            "max_queue_per_client": 4096,
        }
        with launch(
            args.model_dir, args.mode, args.k, pool_size=pool_size, log_dir=args.log_dir,
            worker_settings=workers, frontend_settings=frontend,
        ) as system:  # fmt: skip
            record = await closed_loop(system.frontend.target, args.model, images, args)
            counts = batches_by_worker(system, system.frontend.metrics_port)
            paths = parity_paths(system.frontend.metrics_port)
        spread = {"batches_per_worker_min_max": _spread(counts), "parity_paths": paths}
        records.append({"pool_size": pool_size, **record, **spread})
        print(json.dumps(records[-1]), flush=True)
    return {
        "k": args.k,
        "r": R,
        "mode": args.mode,
        "delay_ms": args.delay_ms,
        "max_batch": args.max_batch,
        "concurrency": args.concurrency,
        "images_per_request": args.images,
        "records": records,
    }


def _spread(counts: dict[str, int]) -> list[int]:
    return [min(counts.values()), max(counts.values())] if counts else [0, 0]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m coded_invnet.tools.scaleout", description=__doc__.split("\n")[0]
    )
    parser.add_argument("run", choices=("pool", "scale"))
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--mode", default="coded-invnet")
    parser.add_argument("--model-dir", default="models/mnist")
    parser.add_argument("--model", default="mnist", help="model name on the frontend")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--log-dir", default=None, help="service logs (default: a temporary folder)")
    parser.add_argument("--duration", type=float, default=24.0, help="seconds of (measured) load")
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline of each request (s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    pool = parser.add_argument_group("pool")
    pool.add_argument("--rate", type=float, default=30.0, help="requests per second on the first frontend")
    scale = parser.add_argument_group("scale")
    scale.add_argument("--delay-ms", type=float, default=100.0, help="injected service time per batch")
    scale.add_argument("--max-batch", type=int, default=4, help="rows per data batch (B)")
    scale.add_argument("--straggler-ms", type=float, default=1000.0, help="the frontend's straggler deadline")
    scale.add_argument("--concurrency", type=int, default=64, help="requests kept in flight")
    scale.add_argument("--clients", type=int, default=4, help="connections they share")
    scale.add_argument("--images", type=int, default=4, help="images per request")
    scale.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    args = parser.parse_args(argv)
    load_before = machine_load()
    report = asyncio.run(pool_run(args) if args.run == "pool" else scale_run(args))
    arguments = sys.argv[1:] if argv is None else list(argv)
    report = {
        "command": shlex.join(["python", "-m", "coded_invnet.tools.scaleout", *arguments]),
        "machine_load": {"before": load_before, "after": machine_load()},
        **report,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    lost = report.get("lost", 0) + sum(r["lost"] for r in report.get("records", []))
    if lost:
        raise SystemExit(f"{lost} queries lost")


if __name__ == "__main__":
    main()
