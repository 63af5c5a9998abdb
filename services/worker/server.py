"""Worker server: `python -m services.worker.server [--flags]` (settings: CODED_* env vars, see
coded_invnet.serving.config). Data and parity workers are the same service with a different model."""

from __future__ import annotations

import asyncio

from coded_invnet.proto import coded_pb2_grpc
from coded_invnet.serving.batch_service import BatchProcessor
from coded_invnet.serving.config import ServingConfig
from coded_invnet.serving.lifecycle import ServiceHost, run_service
from coded_invnet.serving.metrics import ServingMetrics
from coded_invnet.serving.onnx_model import open_model
from services.worker.runtime import FaultInjector, FaultSpec, WorkerRuntime
from services.worker.servicer import WorkerServicer

SERVICE_NAME = "coded.v1.Worker"


async def start(cfg: ServingConfig) -> ServiceHost:
    """A started worker: answering at once, NOT_SERVING until its model is loaded and warmed up."""
    model = open_model(cfg)
    metrics = ServingMetrics(model.name)
    runtime = WorkerRuntime(model, FaultInjector(FaultSpec.from_config(cfg)), fault_api=cfg.fault_api == "on")
    host = ServiceHost(cfg, [SERVICE_NAME], metrics)
    servicer = WorkerServicer(runtime, BatchProcessor.for_config(runtime.infer, metrics, cfg), cfg)
    coded_pb2_grpc.add_WorkerServicer_to_server(servicer, host.server)
    await host.start(lambda: asyncio.to_thread(model.load))
    return host


async def serve(cfg: ServingConfig) -> None:
    host = await start(cfg)
    await host.run_until_signalled()


def main() -> None:
    run_service("worker", serve)


if __name__ == "__main__":
    main()
