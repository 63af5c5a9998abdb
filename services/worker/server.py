"""Worker server: `python -m services.worker.server [--flags]` (settings: CODED_* env vars, see
coded_invnet.serving.config). Data and parity workers are the same service with a different model; a
pool worker (role "pool") takes both kinds of batch: in ParM mode it loads the parity model too and runs
it on the batches marked `parity`."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from coded_invnet.proto import coded_pb2_grpc
from coded_invnet.rpc.batch_service import BatchProcessor
from coded_invnet.rpc.lifecycle import ServiceHost, run_service
from coded_invnet.serving.config import ServingConfig
from coded_invnet.serving.metrics import ServingMetrics
from coded_invnet.serving.onnx_model import OnnxModel, open_model
from services.worker.runtime import FaultInjector, FaultSpec, WorkerRuntime, refuse_parity
from services.worker.servicer import WorkerServicer

SERVICE_NAME = "coded.v1.Worker"


async def start(cfg: ServingConfig) -> ServiceHost:
    """A started worker: answering at once, NOT_SERVING until its model is loaded and warmed up."""
    model = open_model(cfg)
    parity_model = separate_parity_model(cfg)
    metrics = ServingMetrics(model.name)
    faults = FaultInjector(FaultSpec.from_config(cfg))
    runtime = WorkerRuntime(model, faults, fault_api=cfg.fault_api == "on", parity_model=parity_model)
    parity = runtime.infer_parity if parity_model else None  # None: one model runs every batch
    if (cfg.mode, cfg.role) == ("parm", "data"):
        parity = refuse_parity  # a ParM data worker's model cannot stand in for the parity model
    host = ServiceHost(cfg, [SERVICE_NAME], metrics)
    servicer = WorkerServicer(runtime, BatchProcessor.for_config(runtime.infer, metrics, cfg, parity), cfg)
    coded_pb2_grpc.add_WorkerServicer_to_server(servicer, host.server)
    await host.start(lambda: asyncio.to_thread(runtime.load))
    return host


def separate_parity_model(cfg: ServingConfig) -> OnnxModel | None:
    """A ParM pool worker's parity model (coded-invnet's parity runs the data model itself)."""
    if (cfg.mode, cfg.role) != ("parm", "pool"):
        return None
    return open_model(replace(cfg, role="parity", model_file=None))


async def serve(cfg: ServingConfig) -> None:
    """Run the worker until SIGTERM or SIGINT, then drain its in-flight batches and stop."""
    host = await start(cfg)
    await host.run_until_signalled()


def main() -> None:
    run_service("worker", serve)


if __name__ == "__main__":
    main()
