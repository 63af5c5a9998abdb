"""Models and helpers for the service tests.

`model_dir(k)` is models/mnist when the trained models are committed, else a folder of small
random-weight ONNX files with the same I/O contract (docs/CONTRACTS.md), exported once per session.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coded_invnet.proto import coded_pb2
from coded_invnet.serving.config import ServingConfig
from coded_invnet.serving.lifecycle import ServiceHost
from coded_invnet.serving.tensors import arrays_from_proto, arrays_to_proto

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
        await channel.close()
        await host.stop()


def batch(group_id: int, index: int, **arrays: np.ndarray) -> coded_pb2.Batch:
    return coded_pb2.Batch(group_id=group_id, index=index, tensors=arrays_to_proto(arrays))


def outputs(result: coded_pb2.BatchResult) -> dict[str, np.ndarray]:
    assert not result.HasField("error"), result.error
    return arrays_from_proto(result.tensors)


def images(n: int, seed: int = 0, k: int | None = None) -> np.ndarray:
    shape = (n, *IMAGE) if k is None else (n, k, *IMAGE)
    return np.random.default_rng(seed).random(shape, dtype=np.float32)
