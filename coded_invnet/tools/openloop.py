"""Open-loop Poisson load: requests start on a schedule, whatever the server does, and every latency is kept.

Closed-loop tools (Locust) slow down when the server does, hiding the tail (coordinated omission) and round
percentiles; here each request's latency runs from its *scheduled* start, so a stall shows up in full.

    python -m coded_invnet.tools.openloop --target localhost:8001 --rate 100 --duration 30 \
        --out results/openloop.csv
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


Classify = Callable[[np.ndarray, float], Awaitable[Prediction]]


def poisson_schedule(rate_qps: float, duration_s: float, seed: int) -> np.ndarray:
    """Start times (s) of a Poisson process of rate ``rate_qps`` over ``duration_s``."""
    gaps = np.random.default_rng(seed).exponential(1.0 / rate_qps, size=int(rate_qps * duration_s * 1.5) + 16)
    starts = np.cumsum(gaps)
    return starts[starts < duration_s]


async def run_open_loop(
    classify: Classify,
    images: np.ndarray,
    labels: np.ndarray,
    schedule: Sequence[float] | np.ndarray,
    timeout_s: float,
) -> list[Outcome]:
    """Send images[i % N] at schedule[i] seconds from now; returns one Outcome per request, in send order."""
    origin = time.perf_counter()

    async def one(i: int, due: float) -> Outcome:
        image, label = images[i % len(images)], int(labels[i % len(labels)])
        try:
            prediction = await classify(image, timeout_s)
            code, predicted, reconstructed = "OK", prediction.label, prediction.reconstructed
        except grpc.aio.AioRpcError as error:
            code, predicted, reconstructed = error.code().name, -1, False
        return Outcome(due, (time.perf_counter() - origin - due) * 1e3, code, predicted, reconstructed, label)

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
    """Counts, accuracy (all and reconstructed answers) and latency percentiles of answered requests."""
    answered = [o for o in outcomes if o.code == "OK"]
    rebuilt = [o for o in answered if o.reconstructed]
    latencies = np.array([o.latency_ms for o in answered])

    def accuracy(group: Sequence[Outcome]) -> float | None:
        return round(sum(o.predicted == o.label for o in group) / len(group), 4) if group else None

    return {
        "sent": len(outcomes),
        "answered": len(answered),
        "lost": len(outcomes) - len(answered),
        "reconstructed": len(rebuilt),
        "accuracy": accuracy(answered),
        "reconstructed_accuracy": accuracy(rebuilt),
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

    test = load_dataset(args.dataset).test
    schedule = poisson_schedule(args.rate, args.duration, args.seed)
    async with AsyncClient(args.target, args.model, args.timeout, tls_from_arguments(args)) as client:
        outcomes = await run_open_loop(client.predict, test.images, test.labels, schedule, args.timeout)
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
    add_tls_arguments(parser)
    asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
