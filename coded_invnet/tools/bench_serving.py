"""Serving benchmark: what the machinery costs next to the model, in both process layouts.

    python -m coded_invnet.tools.bench_serving [--model-dir models/mnist] [--k 10] \
        --out results/serving.json [--profile-dir docs/profiles]

For each layout of `launch(session=...)` ("per-service": a process session, so a scheduler group, per
service; "shared": every service in one session with this load generator, as one cgroup would be):

1. Light load: the same open-loop Poisson load (--rate, --duration, single-image unary requests through
   the asyncio SDK) against the system in mode `none`, in mode `coded-invnet` (as shipped: each group's
   parity path starts at the p90 of recent healthy groups' latency, or at once on a failure) and with an
   eager parity path (quantile 0), all running, loaded in turn in --rounds alternating slices (so
   background load falls on each alike). Latency p50/p99/p99.9; coding overhead = p50(coded-invnet) −
   p50(none); CPU per request of each service, from /proc, over the slices that loaded it.
2. Saturation: a stream keeping --window requests of --request-batch images in flight, for `none` and
   `coded-invnet`: images/s, CPU per image of every service together and of each kind (frontend, data
   workers, parity path, decoder), the mean rows per data-worker batch.
3. Raw onnxruntime running worker.onnx in this process, in the same run: the best of 1 thread and one
   per core, on batches of the request's size and of the frontend's largest batch (CODED_MAX_BATCH),
   each the best of 3 passes (every benefit of the doubt); its CPU per image.

Machine load: the load average before and after, and the CPU the machine spent outside the systems and
this process during each phase (other processes: the machine is shared). With --profile-dir, py-spy
(a dev dependency) records flame graphs of the frontend and data worker 0 of coded-invnet under
saturation and at --rate, in both layouts (extra load, not counted in the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from coded_invnet.client import AsyncClient, Client
from coded_invnet.data import load_dataset
from coded_invnet.serving.config import ServingConfig
from coded_invnet.tools.base_model import base_predictions
from coded_invnet.tools.cpu_meter import (
    PROFILE_SECONDS,
    CpuMeter,
    flame_graphs,
    machine_busy_s,
    worker_rows_and_runs,
)
from coded_invnet.tools.launcher import SESSIONS, System, launch
from coded_invnet.tools.openloop import Outcome, most_requests, poisson_schedule, run_open_loop, summarize

EAGER = "coded-invnet, eager parity"
VARIANTS = {  # label → (mode, extra frontend settings)
    "none": ("none", {}),
    "coded-invnet": ("coded-invnet", {}),
    EAGER: ("coded-invnet", {"parity_delay_quantile": 0.0, "parity_delay_ms": 0.0}),
}
SATURATED = ("none", "coded-invnet")
TARGETS = {
    "throughput_ratio_min": 0.75,  # saturated coded-invnet / raw onnxruntime, same run
    "cpu_ms_per_image_max": 0.9,  # saturated coded-invnet, every service together
    "p50_ms_max": 4.0,  # coded-invnet at --rate
    "frontend_cpu_ms_per_request_max": 1.0,  # coded-invnet at --rate
    "coding_overhead_p50_ms_max": 0.3,
    "layout_cpu_difference_max": 0.15,  # CPU per image, shared vs per-service, saturated coded-invnet
}


async def interleaved_open_loop(
    systems: dict[str, System],
    images: np.ndarray,
    labels: np.ndarray,
    base: np.ndarray,
    args: argparse.Namespace,
) -> tuple[dict[str, dict[str, Any]], dict[str, CpuMeter]]:
    """The same Poisson load against each system in turn, in --rounds alternating slices, so that any
    drift of the machine's background load falls on every mode alike; each system's CPU is measured over
    its own slices. ``base``: the base model's class of each image (for agreement)."""
    outcomes: dict[str, list[Outcome]] = {mode: [] for mode in systems}
    meters = {mode: CpuMeter(system.services) for mode, system in systems.items()}
    slice_s = args.duration / args.rounds
    clients = {mode: AsyncClient(s.frontend.target, timeout_s=args.timeout) for mode, s in systems.items()}
    try:
        for client in clients.values():  # warm-up: connections, first runs
            await run_open_loop(client.predict, images, labels, poisson_schedule(args.rate, 1.0, 1), 10)
        for round_ in range(args.rounds):
            order = list(clients) if round_ % 2 == 0 else list(reversed(clients))
            for mode in order:
                schedule = poisson_schedule(args.rate, slice_s, args.seed + round_)
                with meters[mode].measuring():
                    outcomes[mode] += await run_open_loop(
                        clients[mode].predict, images, labels, schedule, 10, base
                    )
    finally:
        for client in clients.values():
            await client.close()
    summaries: dict[str, dict[str, Any]] = {
        mode: dict(summarize(found, args.duration)) for mode, found in outcomes.items()
    }
    for mode, summary in summaries.items():
        summary["cpu_ms_per_request"] = meters[mode].per_unit_ms(len(outcomes[mode]))
    return summaries, meters


async def profile_open_loop(
    system: System, images: np.ndarray, labels: np.ndarray, args: argparse.Namespace
) -> None:
    async with AsyncClient(system.frontend.target, timeout_s=args.timeout) as client:
        schedule = poisson_schedule(args.rate, PROFILE_SECONDS + 1, args.seed)
        await run_open_loop(client.predict, images, labels, schedule, 10)


def saturated(system: System, images: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """Images/s answered while a stream keeps --window requests of --request-batch images in flight,
    with the CPU per image of every service and the mean rows per data-worker batch."""
    batch = args.request_batch
    requests = [images[i : i + batch] for i in range(0, len(images) - batch + 1, batch)]
    meter = CpuMeter(system.services)
    with Client(system.frontend.target, timeout_s=args.timeout) as client:
        list(client.stream(requests[:50], window=args.window))  # warm-up
        rows_before, runs_before = worker_rows_and_runs(system)
        started = time.perf_counter()
        with meter.measuring():
            results = list(client.stream(requests, window=args.window))
        seconds = time.perf_counter() - started
    rows, runs = (
        after - before
        for after, before in zip(worker_rows_and_runs(system), (rows_before, runs_before), strict=True)
    )
    answered = sum(len(r.predictions) for r in results)
    return {
        "images_per_s": round(answered / seconds, 1),
        "answered": answered,
        "failed_requests": sum(r.error is not None for r in results),
        "cpu_ms_per_image": meter.per_unit_ms(answered),
        "mean_data_worker_batch_rows": round(rows / max(runs, 1), 2),
    }


def raw_onnxruntime(
    model: Path, images: np.ndarray, batch: int, threads: int, repeats: int = 3
) -> dict[str, float]:
    """The best of ``repeats`` passes over ``images``: images/s and the CPU per image of that pass."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    batches = [images[i : i + batch] for i in range(0, len(images) - batch + 1, batch)]
    for x in batches[:10]:
        session.run(None, {"x": x})
    best = {"images_per_s": 0.0, "cpu_ms_per_image": 0.0}
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        for x in batches:
            session.run(None, {"x": x})
        count = len(batches) * batch
        rate = count / (time.perf_counter() - started)
        if rate > best["images_per_s"]:
            best = {
                "images_per_s": round(rate, 1),
                "cpu_ms_per_image": round((time.process_time() - cpu_started) / count * 1e3, 4),
            }
    return best


def run_layout(session: str, test: Any, base: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """Both phases against freshly launched systems in one layout (``base``: the base model's classes)."""
    # the frontend's batcher may form bigger batches than a request holds: let it, up to max_batch;
    # and a closed loop of --window requests must fit the queue bounds
    in_flight = args.window * args.request_batch
    settings = {"max_queue": max(4096, 2 * in_flight), "max_queue_per_client": max(1024, 2 * in_flight)}
    profiles = None if args.profile_dir is None else Path(args.profile_dir)
    report: dict[str, Any] = {}
    with ExitStack() as stack:  # every system up at once; only one is loaded at a time
        systems = {
            label: stack.enter_context(
                launch(
                    args.model_dir,
                    mode,
                    args.k,
                    frontend_settings={**settings, **extra},
                    log_dir=Path(args.log_dir, session, f"variant{i}"),
                    session=session,
                )
            )
            for i, (label, (mode, extra)) in enumerate(VARIANTS.items())
        }
        summaries, _ = asyncio.run(interleaved_open_loop(systems, test.images, test.labels, base, args))
        for label, summary in summaries.items():
            report[f"open_loop {label}"] = summary
            print(session, label, json.dumps(summary), flush=True)
        for label in SATURATED:
            report[f"saturated {label}"] = saturated(systems[label], test.images, args)
            print(session, "saturated", label, json.dumps(report[f"saturated {label}"]), flush=True)
        if profiles is not None:
            coded = systems["coded-invnet"]
            with flame_graphs(coded, profiles / f"{session}-saturated", PROFILE_SECONDS):
                deadline = time.monotonic() + PROFILE_SECONDS
                while time.monotonic() < deadline:
                    saturated(coded, test.images[:2000], args)
            with flame_graphs(coded, profiles / f"{session}-{args.rate:g}qps", PROFILE_SECONDS):
                asyncio.run(profile_open_loop(coded, test.images, test.labels, args))
    return report


def summary_figures(report: dict[str, Any]) -> dict[str, Any]:
    """The figures the targets are about, per layout, and whether each holds."""
    raw = report["raw_onnxruntime_best"]["images_per_s"]
    figures: dict[str, Any] = {}
    for session in SESSIONS:
        layout = report[session]
        coded, none = layout["open_loop coded-invnet"], layout["open_loop none"]
        saturated_coded = layout["saturated coded-invnet"]
        figures[session] = {
            "throughput_ratio": round(saturated_coded["images_per_s"] / raw, 3),
            "cpu_ms_per_image": saturated_coded["cpu_ms_per_image"]["all services"],
            "p50_ms": coded["p50_ms"],
            "p99_ms": coded["p99_ms"],
            "p999_ms": coded["p999_ms"],
            "frontend_cpu_ms_per_request": coded["cpu_ms_per_request"]["frontend"],
            "coding_overhead_p50_ms": round(coded["p50_ms"] - none["p50_ms"], 3),
        }
    per, shared = (figures[s]["cpu_ms_per_image"] for s in SESSIONS)
    figures["layout_cpu_difference"] = round(abs(shared - per) / per, 3)
    met = {
        "throughput_ratio_min": all(
            figures[s]["throughput_ratio"] >= TARGETS["throughput_ratio_min"] for s in SESSIONS
        ),
        "cpu_ms_per_image_max": all(
            figures[s]["cpu_ms_per_image"] <= TARGETS["cpu_ms_per_image_max"] for s in SESSIONS
        ),
        "p50_ms_max": all(figures[s]["p50_ms"] <= TARGETS["p50_ms_max"] for s in SESSIONS),
        "frontend_cpu_ms_per_request_max": all(
            figures[s]["frontend_cpu_ms_per_request"] <= TARGETS["frontend_cpu_ms_per_request_max"]
            for s in SESSIONS
        ),
        "coding_overhead_p50_ms_max": all(
            figures[s]["coding_overhead_p50_ms"] <= TARGETS["coding_overhead_p50_ms_max"] for s in SESSIONS
        ),
        "layout_cpu_difference_max": figures["layout_cpu_difference"] <= TARGETS["layout_cpu_difference_max"],
    }
    return {"figures": figures, "targets": TARGETS, "met": met}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m coded_invnet.tools.bench_serving", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model-dir", default="models/mnist")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rate", type=float, default=100.0, help="open-loop load, light-load phase (q/s)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load per mode and layout")
    parser.add_argument("--rounds", type=int, default=10, help="alternating slices of the light-load phase")
    parser.add_argument("--request-batch", type=int, default=8, help="images per request, saturation")
    parser.add_argument("--window", type=int, default=256, help="requests in flight, saturation")
    parser.add_argument("--queries", type=int, default=10_000, help="images per saturation run")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sessions", default=",".join(SESSIONS), help="layouts to run, comma-separated")
    parser.add_argument("--profile-dir", default=None, help="write py-spy flame graphs (SVG) here")
    parser.add_argument("--out", default="results/serving.json")
    parser.add_argument("--log-dir", default="results/logs/bench_serving")
    args = parser.parse_args(argv)
    sessions = [s for s in args.sessions.split(",") if s]
    test = load_dataset(args.dataset).test.take(args.queries)
    report: dict[str, Any] = {"k": args.k, "model_dir": args.model_dir, "cores": os.cpu_count()}
    report["load_average_before"] = [round(x, 2) for x in os.getloadavg()]
    started, busy_started = time.monotonic(), machine_busy_s()
    slice_requests = most_requests(args.rate, args.duration / args.rounds)
    base = base_predictions(args.model_dir, test.images, slice_requests)
    for session in sessions:
        report[session] = run_layout(session, test, base, args)
    model = Path(args.model_dir, "worker.onnx")
    raw = {
        f"batch {batch}, {threads} thread(s)": raw_onnxruntime(model, test.images, batch, threads)
        for batch in sorted({args.request_batch, ServingConfig().max_batch})
        for threads in sorted({1, os.cpu_count() or 1})
    }
    report["raw_onnxruntime_by_setting"] = raw
    best = max(raw, key=lambda name: raw[name]["images_per_s"])
    report["raw_onnxruntime_best"] = {"setting": best, **raw[best]}
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    report["machine_busy_cores_mean"] = round(
        (machine_busy_s() - busy_started) / (time.monotonic() - started), 2
    )
    if set(sessions) == set(SESSIONS):
        report["summary"] = summary_figures(report)
    report["settings"] = {k: v for k, v in vars(args).items() if k not in ("out", "log_dir", "profile_dir")}
    report["command"] = "python -m coded_invnet.tools.bench_serving " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report.get("summary", {}), indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
