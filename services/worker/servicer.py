"""Worker gRPC servicer: proto ↔ domain only."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from coded_invnet.proto import coded_pb2, coded_pb2_grpc
from coded_invnet.serving.batch_service import BatchProcessor, model_description
from coded_invnet.serving.config import ServingConfig
from services.worker.runtime import FaultSpec, WorkerRuntime

DELAY_KINDS = {
    "none": coded_pb2.DELAY_NONE,
    "fixed": coded_pb2.DELAY_FIXED,
    "exponential": coded_pb2.DELAY_EXPONENTIAL,
}


def faults_to_proto(spec: FaultSpec) -> coded_pb2.FaultConfig:
    return coded_pb2.FaultConfig(
        delay_kind=DELAY_KINDS[spec.delay],
        delay_ms=spec.delay_ms,
        delay_probability=spec.delay_probability,
        failure_probability=spec.failure_probability,
        seed=spec.seed,
    )


def faults_from_proto(config: coded_pb2.FaultConfig) -> FaultSpec:
    kind = next((name for name, value in DELAY_KINDS.items() if value == config.delay_kind), "unknown")
    return FaultSpec(kind, config.delay_ms, config.delay_probability, config.failure_probability, config.seed)


class WorkerServicer(coded_pb2_grpc.WorkerServicer):
    def __init__(self, runtime: WorkerRuntime, batches: BatchProcessor, cfg: ServingConfig) -> None:
        self.runtime, self._batches, self._cfg = runtime, batches, cfg

    async def Infer(
        self, request: coded_pb2.Batch, context: grpc.aio.ServicerContext
    ) -> coded_pb2.BatchResult:
        return await self._batches.handle(request)

    async def InferStream(
        self, request_iterator: AsyncIterator[coded_pb2.Batch], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[coded_pb2.BatchResult]:
        async for result in self._batches.respond(request_iterator):
            yield result

    async def Describe(
        self, request: coded_pb2.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> coded_pb2.ModelDescription:
        return model_description(self.runtime.model, self._cfg, self._cfg.role)

    async def SetFaults(
        self, request: coded_pb2.FaultConfig, context: grpc.aio.ServicerContext
    ) -> coded_pb2.FaultConfig:
        self.runtime.require_fault_api()  # refused before the request is validated, whatever it holds
        return faults_to_proto(self.runtime.set_faults(faults_from_proto(request)))

    async def GetFaults(
        self, request: coded_pb2.GetFaultsRequest, context: grpc.aio.ServicerContext
    ) -> coded_pb2.FaultConfig:
        return faults_to_proto(self.runtime.get_faults())
