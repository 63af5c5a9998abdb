"""Models and helpers shared by the tests (the shared fixtures live in conftest.py).

`model_dir(k)` is models/mnist when the trained models are committed, else a folder of small
random-weight ONNX files with the same I/O contract (docs/CONTRACTS.md), exported once per session.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coded_invnet.coding import decode_set, parity_coefficients
from coded_invnet.proto import coded_pb2
from coded_invnet.rpc.lifecycle import ServiceHost
from coded_invnet.rpc.proto_tensors import arrays_from_proto, arrays_to_proto
from coded_invnet.serving.config import ServingConfig
from services.frontend.batcher import Batcher
from services.frontend.calls import WorkerOutput
from services.frontend.group import GroupReport
from services.frontend.pool import Placement, place_in_slots

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAINED_DIR = REPO_ROOT / "models" / "mnist"
IMAGE = (1, 28, 28)
LATENT = 784
K = 2


def required_files(k: int) -> list[str]:
    return ["worker.onnx", "head.onnx", f"encoder_k{k}.onnx", f"parm_encoder_k{k}.onnx", f"parm_k{k}.onnx"]


def export_random_models(folder: Path, k: int) -> Path:
    import torch
    from torch import nn

    torch.manual_seed(0)

    class Shared(nn.Module):
        """Worker, head and ParM share weights, so head(z) equals the worker's logits exactly."""

        def __init__(self, part: str) -> None:
            super().__init__()
            self.part = part
            self.latent = nn.Conv2d(1, 1, 3, padding=1)
            self.head = nn.Linear(LATENT, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
            if self.part == "head":
                return self.head(x)
            z = torch.tanh(self.latent(x)).flatten(1)
            return (self.head(z), z) if self.part == "worker" else self.head(z) * 0.5

    class Encoder(nn.Module):
        def __init__(self, learned: bool) -> None:
            super().__init__()
            self.fuse = nn.Conv2d(1, 1, 3, padding=1) if learned else nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fuse(x.mean(1))

    worker, head, parm = Shared("worker"), Shared("head"), Shared("parm")
    head.load_state_dict(worker.state_dict())
    parm.load_state_dict(worker.state_dict())
    batch = {0: "batch"}
    exports = [
        ("worker.onnx", worker, torch.zeros(2, *IMAGE), ["x"], ["logits", "z"]),
        ("head.onnx", head, torch.zeros(2, LATENT), ["z"], ["logits"]),
        (f"encoder_k{k}.onnx", Encoder(True), torch.zeros(2, k, *IMAGE), ["x"], ["parity"]),
        (f"parm_encoder_k{k}.onnx", Encoder(False), torch.zeros(2, k, *IMAGE), ["x"], ["parity"]),
        (f"parm_k{k}.onnx", parm, torch.zeros(2, *IMAGE), ["x"], ["logits"]),
    ]
    folder.mkdir(parents=True, exist_ok=True)
    for name, module, example, inputs, outputs in exports:
        torch.onnx.export(  # the TorchScript exporter: quick, and enough for these small graphs
            module.eval(),
            (example,),
            str(folder / name),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes={n: batch for n in inputs + outputs},
            dynamo=False,
        )
    return folder


def export_parity_encoder(path: Path, k: int, r: int) -> Path:
    """A scratch r-parity encoder of the model contract: "x" (B, k, C, H, W) → "parity" (B, r, C, H, W),
    parity m = Σ_i A[m, i] x_i in pixel space (exact only for a linear g; the trained one learns more)."""
    import torch
    from torch import nn

    class Combine(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("a", torch.tensor(parity_coefficients(k, r), dtype=torch.float32))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.einsum("mk,bkchw->bmchw", self.a, x)  # (B, r, C, H, W)

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        Combine().eval(),
        (torch.zeros(2, k, *IMAGE),),
        str(path),
        input_names=["x"],
        output_names=["parity"],
        dynamic_axes={"x": {0: "batch"}, "parity": {0: "batch"}},
        dynamo=False,
    )
    return path


def parity_model_dir(k: int, r: int, scratch: Path) -> Path:
    """A model folder for k data and r parity batches: the worker and head of `model_dir_for(k)`, and
    models/mnist's trained encoder_k{k}_r{r}.onnx where it exists, a scratch one otherwise."""
    source = model_dir_for(k, scratch / "base")
    folder = scratch / f"k{k}_r{r}"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("worker.onnx", "head.onnx"):
        if not (folder / name).exists():
            (folder / name).symlink_to((source / name).resolve())
    encoder = f"encoder_k{k}_r{r}.onnx"
    if (TRAINED_DIR / encoder).is_file():
        (folder / encoder).symlink_to((TRAINED_DIR / encoder).resolve())
    else:
        export_parity_encoder(folder / encoder, k, r)
    return folder


def model_dir_for(k: int, scratch: Path) -> Path:
    if all((TRAINED_DIR / name).is_file() for name in required_files(k)):
        return TRAINED_DIR
    return export_random_models(scratch, k)


def service_config(service: str, model_dir: Path, **changes: object) -> ServingConfig:
    base = ServingConfig(
        service=service, host="127.0.0.1", port=0, metrics_port=-1, model_dir=model_dir, k=K, ort_threads=1
    )
    return replace(base, **changes)  # type: ignore[arg-type]


async def wait_serving(channel: grpc.aio.Channel, service: str = "", timeout_s: float = 30.0) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    async with asyncio.timeout(timeout_s):
        while True:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(
    start: Callable[[ServingConfig], Awaitable[ServiceHost]], cfg: ServingConfig
) -> AsyncIterator[grpc.aio.Channel]:
    """An in-process server, SERVING, and a channel to it; stopped on exit."""
    host = await start(cfg)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.port}")
    try:
        await wait_serving(channel)
        yield channel
    finally:
        await channel.close(None)
        await host.stop()


def batch(group_id: int, index: int, **arrays: np.ndarray) -> coded_pb2.Batch:
    return coded_pb2.Batch(group_id=group_id, index=index, tensors=arrays_to_proto(arrays))


def outputs(result: coded_pb2.BatchResult) -> dict[str, np.ndarray]:
    assert not result.HasField("error"), result.error
    return arrays_from_proto(result.tensors)


def images(n: int, seed: int = 0, k: int | None = None) -> np.ndarray:
    shape = (n, *IMAGE) if k is None else (n, k, *IMAGE)
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


# The frontend's limits in the shared system, small enough that the bad-input tests can exceed them.
SYSTEM_MAX_MESSAGE_BYTES = 1 << 20
SYSTEM_MAX_QUEUE = 64
MODEL_NAME = "mnist"
LENIENT_STRAGGLER_TIMEOUT_MS = 2000.0  # where only failures, not slowness, should trigger decoding


def reference_logits(model_dir: Path, images: np.ndarray) -> np.ndarray:
    """The data worker's model run in process: what a non-reconstructed answer must equal."""
    session = ort.InferenceSession(str(model_dir / "worker.onnx"), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["logits"], {"x": images.astype(np.float32)})[0])


def random_images(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 28, 28), dtype=np.float32)


# --- an in-process linear model behind the batcher's Backends protocol (the batcher's unit tests)
LINEAR_IMAGE = (1, 4, 4)
LINEAR_D = 16
rng = np.random.default_rng(0)
G = rng.normal(size=(LINEAR_D, LINEAR_D)).astype(np.float32)  # latent map g
H = rng.normal(size=(LINEAR_D, 10)).astype(np.float32)  # head


def true_logits(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1) @ G @ H


@dataclass
class LinearBackends:
    """In-process backends with per-worker faults: a delay (s) or a failure. With r parities the linear
    encoder is exact: parity m is Σ_i A[m, i] x_i, so decoding recovers the true logits."""

    mode: str
    delays: dict[int, float] = field(default_factory=dict)
    dead: set[int] = field(default_factory=set)
    parity_down: bool = False
    decoder_down: bool = False
    parities: int = 1
    dead_parities: set[int] = field(default_factory=set)
    parity_delays: dict[int, float] = field(default_factory=dict)  # parity row → its delay (s)
    calls: list[tuple[str, int]] = field(default_factory=list)
    decoded: list[tuple[list[int], list[int]]] = field(default_factory=list)  # (missing, parity rows)
    cancelled: list[int] = field(default_factory=list)

    def place(self, group_id: int, k: int) -> Placement:
        """The fixed layout of k workers named "0" ... "k-1" (parity workers apart)."""
        return place_in_slots(
            [str(j) for j in range(k)], [f"parity{m}" for m in range(self.parities)], group_id
        )

    def parallel_groups(self, k: int) -> int:
        return 1

    async def infer(self, name: str, group_id: int, index: int, images: np.ndarray) -> WorkerOutput:
        worker = int(name)
        self.calls.append(("infer", worker))
        try:
            await asyncio.sleep(self.delays.get(worker, 0.0))
        except asyncio.CancelledError:
            self.cancelled.append(worker)
            raise
        if worker in self.dead:
            raise ConnectionError(f"worker {worker} is dead")
        z = images.reshape(len(images), -1) @ G
        return WorkerOutput(z @ H, z)

    async def encode(self, group_id: int, batches: np.ndarray) -> np.ndarray:
        self.calls.append(("encode", -1))
        if self.parity_down:
            raise ConnectionError("encoder down")
        coefficients = parity_coefficients(batches.shape[1], self.parities).astype(np.float32)  # (r, k)
        return np.einsum("mk,bk...->bm...", coefficients, batches)  # (b, r, C, H, W)

    async def infer_parity(
        self, worker: str, group_id: int, row: int, parity_images: np.ndarray
    ) -> np.ndarray:
        self.calls.append(("parity", row))
        await asyncio.sleep(self.parity_delays.get(row, 0.0))
        if row in self.dead_parities:
            raise ConnectionError(f"parity worker {row} is dead")
        z = parity_images.reshape(len(parity_images), -1) @ G
        return z if self.mode == "coded-invnet" else z @ H

    async def decode(
        self,
        group_id: int,
        missing: Sequence[int],
        parity_rows: Sequence[int],
        parities: np.ndarray,
        members: np.ndarray,
    ) -> np.ndarray:
        self.calls.extend(("decode", j) for j in missing)
        self.decoded.append((list(missing), list(parity_rows)))
        if self.decoder_down:
            raise ConnectionError("decoder down")
        coefficients = parity_coefficients(len(members), self.parities)
        out = decode_set(coefficients, parity_rows, parities, members, missing)  # (s, b, D) from (p, b, D)
        return out @ H if self.mode == "coded-invnet" else out


async def run_queries(
    backends: LinearBackends, n: int, **cfg: object
) -> tuple[np.ndarray, list, list[GroupReport]]:
    config = ServingConfig(
        service="frontend",
        mode=backends.mode,
        parities=backends.parities,
        **cfg,  # type: ignore[arg-type]
    )
    reports: list[GroupReport] = []
    batcher = Batcher(config, backends, on_group=reports.append)
    batcher.start()
    images = rng.random((n, *LINEAR_IMAGE), dtype=np.float32)
    try:
        results = await batcher.infer(images, timeout=5)
    finally:
        await batcher.stop()
    return images, results, reports


def timed_queries(
    backends: LinearBackends, **cfg: object
) -> tuple[float, np.ndarray, list, list[GroupReport]]:
    """8 queries in groups of k=4 batches of 2: (seconds taken, images, results, reports)."""

    async def timed() -> tuple[float, np.ndarray, list, list[GroupReport]]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        found = await run_queries(backends, 8, k=4, max_batch=2, **cfg)
        return (loop.time() - started, *found)

    return asyncio.run(timed())


# --- k8s/: the rendered kustomizations (tests/unit/test_k8s*.py) ---
K8S = REPO_ROOT / "k8s"
KUSTOMIZATIONS = sorted(path.parent.relative_to(REPO_ROOT) for path in K8S.rglob("kustomization.yaml"))
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")


@functools.cache
def render(kustomization: Path) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (it renders kustomizations offline)")
    result = subprocess.run(
        [kubectl, "kustomize", str(REPO_ROOT / kustomization)], capture_output=True, text=True
    )
    assert result.returncode == 0, f"kubectl kustomize {kustomization}:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def of_kind(docs: tuple[dict[str, Any], ...], *kinds: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] in kinds]


def named(docs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    matches = [doc for doc in of_kind(docs, kind) if doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec
