"""Serving benchmark: the cost of coding without faults, and end-to-end throughput against raw onnxruntime.

    python -m coded_invnet.bench_serving [--model-dir models/mnist] [--k 10] --out results/serving.json

1. Coding overhead: the same open-loop Poisson load (--rate, --duration, single-image unary requests
   through the asyncio SDK) against the system in mode `none` and in mode `coded-invnet`;
   overhead = p50(coded-invnet) − p50(none). Target ≤ 1 ms.
2. Throughput: queries/s answered by the coded-invnet system under saturating load (a stream of
   --request-batch images per request, --window requests in flight), against onnxruntime running
   worker.onnx in this process on batches of the same size (the better of 1 thread and one per core:
   the cores the whole system shares). Target ratio ≥ 0.5.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from coded_invnet.client import AsyncClient, Client
from coded_invnet.data import load_dataset
from coded_invnet.launcher import System, launch
from loadtest.openloop import poisson_schedule, run_open_loop, summarize


async def open_loop(system: System, images: np.ndarray, labels: np.ndarray, args: argparse.Namespace) -> dict:
    async with AsyncClient(system.frontend.target, timeout_s=args.timeout) as client:
        await run_open_loop(
            client.predict, images, labels, poisson_schedule(args.rate, 2.0, args.seed + 1), 10
        )
        schedule = poisson_schedule(args.rate, args.duration, args.seed)
        outcomes = await run_open_loop(client.predict, images, labels, schedule, args.timeout)
    return dict(summarize(outcomes, args.duration))


def saturated_qps(system: System, images: np.ndarray, args: argparse.Namespace) -> float:
    """Queries/s answered while a stream keeps --window requests of --request-batch images in flight."""
    batch = args.request_batch
    requests = [images[i : i + batch] for i in range(0, len(images) - batch + 1, batch)]
    with Client(system.frontend.target, timeout_s=args.timeout) as client:
        list(client.stream(requests[:50], window=args.window))  # warm-up
        started = time.perf_counter()
        answered = sum(len(r.predictions) for r in client.stream(requests, window=args.window))
        return answered / (time.perf_counter() - started)


def raw_onnxruntime_qps(model: Path, images: np.ndarray, batch: int, threads: int) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    batches = [images[i : i + batch] for i in range(0, len(images) - batch + 1, batch)]
    for x in batches[:10]:
        session.run(None, {"x": x})
    started = time.perf_counter()
    for x in batches:
        session.run(None, {"x": x})
    return len(batches) * batch / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m coded_invnet.bench_serving", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model-dir", default="models/mnist")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument(
        "--rate", type=float, default=100.0, help="open-loop load of the overhead phase (q/s)"
    )
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of the overhead phase")
    parser.add_argument("--request-batch", type=int, default=8, help="images per request, throughput phase")
    parser.add_argument("--window", type=int, default=64, help="requests in flight, throughput phase")
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
    for mode in ("none", "coded-invnet"):
        log_dir = Path(args.log_dir, mode)
        with launch(args.model_dir, mode, args.k, frontend_settings=settings, log_dir=log_dir) as system:
            report[f"open_loop_{mode}"] = asyncio.run(open_loop(system, test.images, test.labels, args))
            print(mode, json.dumps(report[f"open_loop_{mode}"]), flush=True)
            if mode == "coded-invnet":
                report["throughput_qps"] = round(saturated_qps(system, test.images, args), 1)
    raw = raw_onnxruntime_qps(
        Path(args.model_dir, "worker.onnx"), test.images, args.request_batch, os.cpu_count() or 1
    )
    overhead = report["open_loop_coded-invnet"]["p50_ms"] - report["open_loop_none"]["p50_ms"]
    report.update(
        {
            "coding_overhead_p50_ms": round(overhead, 3),
            "coding_overhead_target_ms": 1.0,
            "raw_onnxruntime_qps": round(raw, 1),
            "throughput_ratio": round(report["throughput_qps"] / raw, 3),
            "throughput_ratio_target": 0.5,
            "settings": {k: v for k, v in vars(args).items() if k not in ("out", "log_dir")},
            "command": "python -m coded_invnet.bench_serving "
            + shlex.join(sys.argv[1:] if argv is None else argv),
        }
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"coding overhead (p50 coded-invnet − none at {args.rate:g} q/s): {overhead:.3f} ms; "
        f"throughput {report['throughput_qps']:.0f} q/s vs raw onnxruntime {raw:.0f} q/s "
        f"(ratio {report['throughput_ratio']:.2f}); wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
