"""Open-loop Poisson load: requests start on a schedule, whatever the server does, and every latency is kept.

Closed-loop tools (Locust) slow down when the server does, hiding the tail (coordinated omission) and round
percentiles; here each request's latency runs from its *scheduled* start, so a stall shows up in full.

    python -m coded_invnet.tools.openloop --target localhost:8001 --rate 100 --duration 30 \
        --out results/openloop.csv --model-dir models/mnist

Each summary reports true-label accuracy (answers against the test labels) and, given the base model
(``--model-dir`` here, the model folder in the tools that launch the system), agreement with it: answers
against the class the base model itself gives that image with no fault.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from coded_invnet.client import AsyncClient, Prediction, TlsOptions


@dataclass(frozen=True)
class Outcome:
    """One request: when it was due, how long it took from then, and what came back."""

    scheduled_s: float
    latency_ms: float
    code: str  # "OK" or the gRPC status name
    predicted: int  # -1 when it failed
    reconstructed: bool
    label: int
    base: int = -1  # the base model's own class for the image; -1 when unknown


Classify = Callable[[np.ndarray, float], Awaitable[Prediction]]


def most_requests(rate_qps: float, duration_s: float) -> int:
    """An upper bound on len(poisson_schedule(rate_qps, duration_s, any seed))."""
    return int(rate_qps * duration_s * 1.5) + 16


def poisson_schedule(rate_qps: float, duration_s: float, seed: int) -> np.ndarray:
    """Start times (s) of a Poisson process of rate ``rate_qps`` over ``duration_s``."""
    gaps = np.random.default_rng(seed).exponential(1.0 / rate_qps, size=most_requests(rate_qps, duration_s))
    starts = np.cumsum(gaps)
    return starts[starts < duration_s]


async def run_open_loop(
    classify: Classify,
    images: np.ndarray,
    labels: np.ndarray,
    schedule: Sequence[float] | np.ndarray,
    timeout_s: float,
    base_labels: np.ndarray | None = None,
) -> list[Outcome]:
    """Send images[i % N] at schedule[i] seconds from now; returns one Outcome per request, in send order.
    ``base_labels`` (the base model's classes, see ``base_model.base_predictions``) is indexed like labels;
    an image beyond its end has an unknown base (-1), so a short array makes agreement None, not wrong."""
    origin = time.perf_counter()
    bases = np.zeros(0, np.int64) if base_labels is None else base_labels

    async def one(i: int, due: float) -> Outcome:
        image, label = images[i % len(images)], int(labels[i % len(labels)])
        j = i % len(images)
        base = int(bases[j]) if j < len(bases) else -1
        try:
            prediction = await classify(image, timeout_s)
            code, predicted, reconstructed = "OK", prediction.label, prediction.reconstructed
        except grpc.aio.AioRpcError as error:
            code, predicted, reconstructed = error.code().name, -1, False
        latency_ms = (time.perf_counter() - origin - due) * 1e3
        return Outcome(due, latency_ms, code, predicted, reconstructed, label, base)

    tasks = []
    for i, due in enumerate(schedule):
        delay = origin + due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    return list(await asyncio.gather(*tasks))


def percentile_ms(latencies: np.ndarray, q: float) -> float:
    return round(float(np.percentile(latencies, q)), 3) if len(latencies) else float("nan")


def summarize(outcomes: Sequence[Outcome], duration_s: float) -> dict[str, float | int | None]:
    """Counts, true-label accuracy and agreement with the base model (of all and of reconstructed answers),
    and latency percentiles of answered requests. Agreement is None where a group is empty or the base
    class of any of its answers is unknown."""
    answered = [o for o in outcomes if o.code == "OK"]
    rebuilt = [o for o in answered if o.reconstructed]
    latencies = np.array([o.latency_ms for o in answered])

    def accuracy(group: Sequence[Outcome]) -> float | None:
        return round(sum(o.predicted == o.label for o in group) / len(group), 4) if group else None

    def agreement(group: Sequence[Outcome]) -> float | None:
        if not group or any(o.base < 0 for o in group):
            return None
        return round(sum(o.predicted == o.base for o in group) / len(group), 4)

    return {
        "sent": len(outcomes),
        "answered": len(answered),
        "lost": len(outcomes) - len(answered),
        "reconstructed": len(rebuilt),
        "accuracy": accuracy(answered),
        "reconstructed_accuracy": accuracy(rebuilt),
        "agreement": agreement(answered),
        "reconstructed_agreement": agreement(rebuilt),
        "p50_ms": percentile_ms(latencies, 50),
        "p99_ms": percentile_ms(latencies, 99),
        "p999_ms": percentile_ms(latencies, 99.9),
        "throughput_qps": round(len(answered) / duration_s, 2),
    }


def write_csv(outcomes: Sequence[Outcome], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=[f.name for f in fields(Outcome)])
        writer.writeheader()
        writer.writerows(asdict(o) for o in outcomes)


def add_tls_arguments(parser: Any) -> None:
    """`--tls-ca` / `--tls-server-name`: talk TLS to the frontend (its clients need no certificate)."""
    parser.add_argument("--tls-ca", default=None, help="TLS: the CA (PEM) the frontend's certificate is from")
    parser.add_argument("--tls-server-name", default="", help="TLS: the name on it, if not the target's host")


def tls_from_arguments(args: Any) -> TlsOptions | None:
    return None if args.tls_ca is None else TlsOptions(args.tls_ca, server_name=args.tls_server_name)


async def _main(args: argparse.Namespace) -> None:
    from coded_invnet.data import load_dataset
    from coded_invnet.tools.base_model import base_predictions

    test = load_dataset(args.dataset).test
    schedule = poisson_schedule(args.rate, args.duration, args.seed)
    # the frontend is remote: its base model is known only if given (no agreement without it)
    base = None if args.model_dir is None else base_predictions(args.model_dir, test.images, len(schedule))
    async with AsyncClient(args.target, args.model, args.timeout, tls_from_arguments(args)) as client:
        outcomes = await run_open_loop(client.predict, test.images, test.labels, schedule, args.timeout, base)
    write_csv(outcomes, args.out)
    print(summarize(outcomes, args.duration))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m coded_invnet.tools.openloop", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--target", default="localhost:8001", help="frontend host:port")
    parser.add_argument("--model", default="mnist", help="model name on the frontend")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--rate", type=float, default=100.0, help="mean requests per second")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--timeout", type=float, default=5.0, help="deadline of each request (s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/openloop.csv"), help="per-request CSV")
    parser.add_argument(
        "--model-dir", type=Path, default=None, help="the served model's folder (worker.onnx): adds agreement"
    )
    add_tls_arguments(parser)
    asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
