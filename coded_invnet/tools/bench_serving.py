"""Serving benchmark: the cost of coding without faults, and end-to-end throughput against raw onnxruntime.

    python -m coded_invnet.tools.bench_serving [--model-dir models/mnist] [--k 10] --out results/serving.json

1. Coding overhead: the same open-loop Poisson load (--rate, --duration, single-image unary requests
   through the asyncio SDK) against the system in mode `none` and in mode `coded-invnet`, both running,
   loaded in turn in --rounds alternating slices (so background load falls on both alike);
   overhead = p50(coded-invnet) − p50(none). Target ≤ 1 ms. coded-invnet runs as shipped: each group's
   parity path starts at the p90 of recent healthy groups' latency (CODED_PARITY_DELAY_QUANTILE), or at
   once on a failure. Also measured: the eager variant (parity path with the data batches, quantile 0),
   whose parity work for every group shares the cores with the data path.
2. Throughput: queries/s answered by the coded-invnet system under saturating load (a stream of
   --request-batch images per request, --window requests in flight), against onnxruntime running
   worker.onnx in this process: the best of 1 thread and one per core (the cores the whole system
   shares), on batches of the request's size and of the frontend's largest batch (CODED_MAX_BATCH),
   each the best of 3 passes. Target ratio ≥ 0.5.
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
from coded_invnet.tools.launcher import System, launch
from coded_invnet.tools.openloop import Outcome, poisson_schedule, run_open_loop, summarize


async def interleaved_open_loop(
    systems: dict[str, System], images: np.ndarray, labels: np.ndarray, args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    """The same Poisson load against each system in turn, in --rounds alternating slices, so that any
    drift of the machine's background load falls on every mode alike."""
    outcomes: dict[str, list[Outcome]] = {mode: [] for mode in systems}
    slice_s = args.duration / args.rounds
    clients = {mode: AsyncClient(s.frontend.target, timeout_s=args.timeout) for mode, s in systems.items()}
    try:
        for client in clients.values():  # warm-up: connections, first runs
            await run_open_loop(client.predict, images, labels, poisson_schedule(args.rate, 1.0, 1), 10)
        for round_ in range(args.rounds):
            order = list(clients) if round_ % 2 == 0 else list(reversed(clients))
            for mode in order:
                schedule = poisson_schedule(args.rate, slice_s, args.seed + round_)
                outcomes[mode] += await run_open_loop(clients[mode].predict, images, labels, schedule, 10)
    finally:
        for client in clients.values():
            await client.close()
    return {mode: dict(summarize(found, args.duration)) for mode, found in outcomes.items()}


def saturated_qps(system: System, images: np.ndarray, args: argparse.Namespace) -> float:
    """Queries/s answered while a stream keeps --window requests of --request-batch images in flight."""
    batch = args.request_batch
    requests = [images[i : i + batch] for i in range(0, len(images) - batch + 1, batch)]
    with Client(system.frontend.target, timeout_s=args.timeout) as client:
        list(client.stream(requests[:50], window=args.window))  # warm-up
        started = time.perf_counter()
        answered = sum(len(r.predictions) for r in client.stream(requests, window=args.window))
        return answered / (time.perf_counter() - started)


def raw_onnxruntime_qps(model: Path, images: np.ndarray, batch: int, threads: int, repeats: int = 3) -> float:
    """The best of ``repeats`` passes over ``images`` (the raw side gets every benefit of the doubt)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    batches = [images[i : i + batch] for i in range(0, len(images) - batch + 1, batch)]
    for x in batches[:10]:
        session.run(None, {"x": x})
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        for x in batches:
            session.run(None, {"x": x})
        best = max(best, len(batches) * batch / (time.perf_counter() - started))
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m coded_invnet.tools.bench_serving", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model-dir", default="models/mnist")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument(
        "--rate", type=float, default=100.0, help="open-loop load of the overhead phase (q/s)"
    )
    parser.add_argument(
        "--duration", type=float, default=30.0, help="seconds of load per mode, overhead phase"
    )
    parser.add_argument("--rounds", type=int, default=10, help="alternating slices of the overhead phase")
    parser.add_argument("--request-batch", type=int, default=8, help="images per request, throughput phase")
    parser.add_argument("--window", type=int, default=256, help="requests in flight, throughput phase")
    parser.add_argument("--queries", type=int, default=10_000, help="queries in the throughput phase")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/serving.json")
    parser.add_argument("--log-dir", default="results/logs/bench_serving")
    args = parser.parse_args(argv)
    test = load_dataset(args.dataset).test.take(args.queries)
    # the frontend's batcher may form bigger batches than a request holds: let it, up to max_batch
    settings = {"max_queue": 100_000}
    report: dict[str, Any] = {"k": args.k, "model_dir": args.model_dir, "cores": os.cpu_count()}
    report["load_average_before"] = [round(x, 2) for x in os.getloadavg()]
    eager = "coded-invnet, eager parity"
    variants = {  # label → (mode, extra frontend settings)
        "none": ("none", {}),
        "coded-invnet": ("coded-invnet", {}),
        eager: ("coded-invnet", {"parity_delay_quantile": 0.0, "parity_delay_ms": 0.0}),
    }
    with ExitStack() as stack:  # every system up at once; only one is loaded at a time
        systems = {
            label: stack.enter_context(
                launch(
                    args.model_dir,
                    mode,
                    args.k,
                    frontend_settings={**settings, **extra},
                    log_dir=Path(args.log_dir, f"variant{i}"),
                )
            )
            for i, (label, (mode, extra)) in enumerate(variants.items())
        }
        summaries = asyncio.run(interleaved_open_loop(systems, test.images, test.labels, args))
        for label, summary in summaries.items():
            report[f"open_loop_{label}"] = summary
            print(label, json.dumps(summary), flush=True)
        report["throughput_qps"] = round(saturated_qps(systems["coded-invnet"], test.images, args), 1)
    model = Path(args.model_dir, "worker.onnx")
    # the better of one thread and one per core: onnxruntime's best on these cores
    raw_by_setting = {
        f"batch {batch}, {threads} thread(s)": raw_onnxruntime_qps(model, test.images, batch, threads)
        for batch in sorted({args.request_batch, ServingConfig().max_batch})
        for threads in sorted({1, os.cpu_count() or 1})
    }
    report["raw_onnxruntime_qps_by_setting"] = {name: round(q, 1) for name, q in raw_by_setting.items()}
    raw = max(raw_by_setting.values())
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    overhead = report["open_loop_coded-invnet"]["p50_ms"] - report["open_loop_none"]["p50_ms"]
    overhead_eager = report[f"open_loop_{eager}"]["p50_ms"] - report["open_loop_none"]["p50_ms"]
    report.update(
        {
            "coding_overhead_p50_ms": round(overhead, 3),
            "coding_overhead_p50_ms_eager_parity": round(overhead_eager, 3),
            "coding_overhead_target_ms": 1.0,
            "raw_onnxruntime_qps": round(raw, 1),
            "throughput_ratio": round(report["throughput_qps"] / raw, 3),
            "throughput_ratio_target": 0.5,
            "settings": {k: v for k, v in vars(args).items() if k not in ("out", "log_dir")},
            "command": "python -m coded_invnet.tools.bench_serving "
            + shlex.join(sys.argv[1:] if argv is None else argv),
        }
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"coding overhead (p50 coded-invnet − none at {args.rate:g} q/s): {overhead:.3f} ms "
        f"({overhead_eager:.3f} ms with eager parity); "
        f"throughput {report['throughput_qps']:.0f} q/s vs raw onnxruntime {raw:.0f} q/s "
        f"(ratio {report['throughput_ratio']:.2f}); wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
