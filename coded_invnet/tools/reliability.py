"""Reliability report: every fault the system must survive, one after another, each under open-loop MNIST
load on one locally launched system, written to results/reliability.json.

    python -m coded_invnet.tools.reliability --out results/reliability.json   # = make reliability

Faults, one phase each, are listed in `faults()`. Per phase: sent, answered, lost, errors by status code,
reconstructed, true-label accuracy and agreement with the base model (--model-dir's worker.onnx) of all and
of the reconstructed answers, p50 / p99.9 / max latency, and the frontend's peak resident memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from coded_invnet.client import AsyncClient
from coded_invnet.data import load_dataset
from coded_invnet.proto import inference_pb2, inference_pb2_grpc
from coded_invnet.serving.config import ServingConfig
from coded_invnet.tools.base_model import base_predictions
from coded_invnet.tools.launcher import System, launch, wait_serving
from coded_invnet.tools.openloop import Outcome, poisson_schedule, run_open_loop, summarize

Fault = Callable[[System, float], Awaitable[dict[str, Any]]]
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]  # not the load's connection: its own peer
MNIST_SHAPE = (1, 28, 28)


def resident_mb(pid: int) -> float:  # 0 while the process restarts
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return 0.0
    return 0.0


class PeakMemory:
    """Samples the frontend's resident size (it may restart: its pid is read each time)."""

    def __init__(self, system: System) -> None:
        self._system, self.peak_mb, self._stop = system, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_mb = max(self.peak_mb, resident_mb(self._system.frontend.pid))

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def service_name(system: System, role: str) -> str:
    """A service's name; "data worker" stands for the middle one of the data workers."""
    return system.workers[len(system.workers) // 2].name if role == "data worker" else role


async def kill_and_restart(system: System, name: str, down_s: float = 1.0) -> None:
    system.services[name].kill()
    await asyncio.sleep(down_s)
    system.services[name].restart()


def killing(role: str) -> Fault:
    async def fault(system: System, phase_s: float) -> dict[str, Any]:
        await asyncio.sleep(phase_s / 3)
        name = service_name(system, role)
        await kill_and_restart(system, name)
        return {"killed": [name]}

    return fault


def stopping(role: str, stopped_s: float = 5.0) -> Fault:
    async def fault(system: System, phase_s: float) -> dict[str, Any]:
        await asyncio.sleep(phase_s / 4)
        name = service_name(system, role)
        system.services[name].pause()
        await asyncio.sleep(stopped_s)
        system.services[name].resume()
        return {"stopped": [name], "stopped_s": stopped_s}

    return fault


async def no_fault(system: System, phase_s: float) -> dict[str, Any]:  # the baseline
    return {}


async def two_workers_at_once(system: System, phase_s: float) -> dict[str, Any]:
    await asyncio.sleep(phase_s / 3)
    names = [w.name for w in system.workers[:2]]
    await asyncio.gather(*(kill_and_restart(system, name, 2.0) for name in names))
    return {"killed": names}


def random_schedule(seed: int) -> Fault:
    async def fault(system: System, phase_s: float) -> dict[str, Any]:
        chooser, killed = random.Random(seed), []
        names = [name for name in system.services if name != "frontend"]
        deadline = time.monotonic() + phase_s - 4
        while (gap := chooser.uniform(3, 7)) < deadline - time.monotonic():
            await asyncio.sleep(gap)
            killed.append(chooser.choice(names))
            await kill_and_restart(system, killed[-1])
        return {"killed": killed}

    return fault


def restart_loop(seed: int) -> Fault:
    async def fault(system: System, phase_s: float) -> dict[str, Any]:
        chooser, killed = random.Random(seed), []
        deadline = time.monotonic() + phase_s - 2
        while time.monotonic() < deadline:
            killed.append(chooser.choice(system.workers).name)
            await kill_and_restart(system, killed[-1], 0.5)
            await asyncio.sleep(0.5)
        return {"cycles": len(killed)}

    return fault


def malformed_requests(model: str) -> list[inference_pb2.ModelInferRequest]:
    def request(shape: Sequence[int], data: bytes, name: str = "x", datatype: str = "FP32", **kw: Any) -> Any:
        message = inference_pb2.ModelInferRequest(model_name=kw.get("model", model))
        message.inputs.add(name=name, datatype=datatype, shape=list(shape))
        message.raw_input_contents.append(data)
        return message

    good = np.zeros((2, *MNIST_SHAPE), np.float32)
    nan = good.copy()
    nan[1, 0, 3, 3] = np.nan
    return [
        request((2, 28, 28), good.tobytes()),
        request((2, *MNIST_SHAPE), b"\0" * 7),
        request((2, *MNIST_SHAPE), nan.tobytes()),
        request((2, *MNIST_SHAPE), good.tobytes(), model="m" * 1_000_000),
        request((2, *MNIST_SHAPE), good.tobytes(), name="n" * 100_000),
        request((2, *MNIST_SHAPE), good.astype(np.float64).tobytes(), datatype="FP64"),
        request((10**9, *MNIST_SHAPE), b""),
        inference_pb2.ModelInferRequest(model_name=model),
    ]


class OtherClient:
    """A second client on its own connection (so its own peer for the per-client bounds)."""

    def __init__(self, target: str) -> None:
        options = [*OWN_CONNECTION, ("grpc.max_send_message_length", 256 << 20)]
        self._channel = grpc.aio.insecure_channel(target, options=options)
        self._stub = inference_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self.codes: Counter[str] = Counter()

    async def send(self, messages: Sequence[inference_pb2.ModelInferRequest]) -> None:
        async def one(message: inference_pb2.ModelInferRequest) -> None:
            try:
                await self._stub.ModelInfer(message, timeout=30)
                self.codes["OK"] += 1
            except grpc.aio.AioRpcError as error:
                self.codes[error.code().name] += 1

        await asyncio.gather(*(one(m) for m in messages))

    async def close(self) -> None:
        await self._channel.close(None)


def images_request(model: str, rows: int) -> inference_pb2.ModelInferRequest:
    message = inference_pb2.ModelInferRequest(model_name=model)
    message.inputs.add(name="x", datatype="FP32", shape=[rows, *MNIST_SHAPE])
    message.raw_input_contents.append(np.zeros((rows, *MNIST_SHAPE), np.float32).tobytes())
    return message


def flood(model: str, per_s: float = 50.0) -> Fault:
    async def fault(system: System, phase_s: float) -> dict[str, Any]:
        kinds = malformed_requests(model)
        client = OtherClient(system.frontend.target)
        try:
            for i in range(int(phase_s * per_s)):
                await client.send([kinds[i % len(kinds)]])
                await asyncio.sleep(1 / per_s)
        finally:
            await client.close()
        return {"malformed_sent": sum(client.codes.values()), "malformed_codes": dict(client.codes)}

    return fault


def big_requests(model: str, concurrent: int = 8, rounds: int = 3) -> Fault:
    """Rounds of `concurrent` requests of the largest message the frontend accepts (more rows than a
    client may queue: refused once their header is read) and of the most rows a client may queue."""

    async def fault(system: System, phase_s: float) -> dict[str, Any]:
        frontend = ServingConfig(service="frontend")  # the launched frontend's defaults
        largest = images_request(model, (frontend.message_limit - 4096) // (4 * int(np.prod(MNIST_SHAPE))))
        admissible = images_request(model, frontend.max_queue_per_client)
        idle_mb = resident_mb(system.frontend.pid)
        client = OtherClient(system.frontend.target)
        try:
            for _ in range(rounds):
                await asyncio.sleep(phase_s / (rounds + 2))
                await client.send([largest] * concurrent)
                await client.send([admissible] * concurrent)
        finally:
            await client.close()
        await asyncio.sleep(3)
        return {
            "big_request_bytes": [len(largest.raw_input_contents[0]), len(admissible.raw_input_contents[0])],
            "big_request_codes": dict(client.codes),
            "frontend_rss_before_mb": round(idle_mb, 1),
            "frontend_rss_3s_after_mb": round(resident_mb(system.frontend.pid), 1),
        }

    return fault


def faults(seed: int, model: str) -> dict[str, Fault]:
    """SIGKILL of each service kind restarted 1 s later, SIGSTOP of a worker and the encoder, two workers
    at once, a random schedule (a kill every 3-7 s), the restart loop, malformed and big requests."""
    return {
        "none": no_fault,
        "kill data worker": killing("data worker"),
        "kill parity worker": killing("parity-worker"),
        "kill encoder": killing("encoder"),
        "kill decoder": killing("decoder"),
        "kill frontend": killing("frontend"),
        "SIGSTOP data worker 5 s": stopping("data worker"),
        "SIGSTOP encoder 5 s": stopping("encoder"),
        "two data workers at once": two_workers_at_once,
        "random schedule": random_schedule(seed),
        "restart loop": restart_loop(seed),
        "malformed flood": flood(model),
        "big concurrent requests": big_requests(model),
    }


def phase_record(outcomes: list[Outcome], phase_s: float, peak_mb: float) -> dict[str, Any]:
    codes = Counter(o.code for o in outcomes if o.code != "OK")
    latencies = [o.latency_ms for o in outcomes if o.code == "OK"]
    return {
        **summarize(outcomes, phase_s),
        "errors": dict(codes),
        "deadline_exceeded": codes.get("DEADLINE_EXCEEDED", 0),
        "max_ms": round(max(latencies), 3) if latencies else None,
        "peak_frontend_rss_mb": round(peak_mb, 1),
    }


async def run_phase(system: System, fault: Fault, args: argparse.Namespace, phase_s: float) -> dict[str, Any]:
    test = load_dataset(args.dataset).test
    schedule = poisson_schedule(args.rate, phase_s, args.seed)
    base = base_predictions(args.model_dir, test.images, len(schedule))
    # a production client rides out a frontend restart within its deadline
    async with AsyncClient(system.frontend.target, args.model, args.timeout, wait_for_ready=True) as client:
        with PeakMemory(system) as memory:
            load = run_open_loop(client.predict, test.images, test.labels, schedule, args.timeout, base)
            outcomes, details = await asyncio.gather(load, fault(system, phase_s))
    await asyncio.to_thread(wait_serving, list(system.services.values()), 60.0)  # before the next fault
    return {**phase_record(outcomes, phase_s, memory.peak_mb), **details}


def _fraction(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def markdown_table(report: dict[str, Any]) -> str:
    """The report as the table docs/RESULTS.md shows (reports written before agreement was measured show
    "–" there)."""
    rows = [
        "| fault | sent | answered | lost | errors | true-label accuracy | agreement with the base model "
        "| reconstructed (true-label accuracy / agreement) | p50 ms | p99.9 ms | max ms "
        "| peak frontend RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in report["phases"]:
        errors = ", ".join(f"{code} {n}" for code, n in sorted(p["errors"].items())) or "none"
        rebuilt = p["reconstructed_accuracy"], p.get("reconstructed_agreement")
        quality = "" if rebuilt == (None, None) else f" ({_fraction(rebuilt[0])} / {_fraction(rebuilt[1])})"
        rows.append(
            f"| {p['fault']} | {p['sent']} | {p['answered']} | {p['lost']} | {errors} | "
            f"{_fraction(p['accuracy'])} | {_fraction(p.get('agreement'))} | {p['reconstructed']}{quality} | "
            f"{p['p50_ms']} | {p['p999_ms']} | {p['max_ms']} | {p['peak_frontend_rss_mb']} |"
        )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m coded_invnet.tools.reliability", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model-dir", default="models/mnist")
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rate", type=float, default=50.0, help="mean queries per second (Poisson)")
    parser.add_argument("--phase", type=float, default=30.0, help="seconds of load per fault")
    parser.add_argument("--long-phase", type=float, default=60.0, help="the random schedule and restart loop")
    parser.add_argument("--timeout", type=float, default=5.0, help="client deadline (s)")
    parser.add_argument("--only", nargs="*", help="run these faults only (names as in the report)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-dir", default=None)
    parser.add_argument("--out", type=Path, default=Path("results/reliability.json"))
    parser.add_argument("--table", type=Path, help="print this report as a markdown table, and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table(json.loads(args.table.read_text())))
        return
    chosen = {n: f for n, f in faults(args.seed, args.model).items() if not args.only or n in args.only}
    arguments = sys.argv[1:] if argv is None else list(argv)
    records = []
    started, load_before = time.time(), os.getloadavg()[0]
    with launch(args.model_dir, "coded-invnet", args.k, log_dir=args.log_dir) as system:
        for name, fault in chosen.items():
            phase_s = args.long_phase if name in ("random schedule", "restart loop") else args.phase
            record = {"fault": name, **asyncio.run(run_phase(system, fault, args, phase_s))}
            records.append(record)
            print(json.dumps({k: record[k] for k in ("fault", "sent", "answered", "lost", "p999_ms")}))
    baseline = next((r for r in records if r["fault"] == "none"), None)
    report = {
        "command": "python -m coded_invnet.tools.reliability " + shlex.join(arguments),
        "k": args.k,
        "rate_qps": args.rate,
        "client_timeout_s": args.timeout,
        "fault_free_p999_ms": baseline["p999_ms"] if baseline else None,
        "load_average_before_after": [load_before, os.getloadavg()[0]],
        "cores": os.cpu_count(),
        "seconds": round(time.time() - started, 1),
        "phases": records,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
