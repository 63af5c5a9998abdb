"""The Batch → BatchResult plumbing shared by the worker, encoder and decoder servicers: tensor
decoding, metrics, per-batch errors, concurrent stream processing with in-stream cancellation.

Each servicer binds `BatchProcessor.handle` to its unary RPC (Infer, Encode, Decode) and
`BatchProcessor.respond` to its stream RPC (InferStream, EncodeStream, DecodeStream)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import numpy as np

from coded_invnet.proto import coded_pb2
from coded_invnet.rpc.batch_stream import BatchKey
from coded_invnet.rpc.grpc_errors import batch_status
from coded_invnet.rpc.proto_tensors import arrays_from_proto, arrays_to_proto
from coded_invnet.serving.config import ServingConfig
from coded_invnet.serving.errors import Cancelled, InvalidInput, ServingError
from coded_invnet.serving.metrics import RequestTiming, ServingMetrics
from coded_invnet.serving.onnx_model import Computed, OnnxModel, TensorSpec
from coded_invnet.serving.streams import StreamResponder, Withdrawal

# input arrays by name → outputs
Process = Callable[[dict[str, np.ndarray]], Awaitable[Computed]]
PENDING_PER_SLOT = 16  # a stream may queue this many batches per concurrent slot before RESOURCE_EXHAUSTED


class BatchProcessor:
    """`parity_process` runs the batches marked `parity` (a pool worker's ParM parity model); None: the
    same `process` runs every batch."""

    def __init__(
        self,
        process: Process,
        metrics: ServingMetrics,
        max_message_bytes: int,
        max_inflight: int,
        parity_process: Process | None = None,
    ):
        self.process = process
        self.parity_process = parity_process
        self.metrics = metrics
        self.max_message_bytes = max_message_bytes
        self.max_inflight = max_inflight

    @classmethod
    def for_config(
        cls,
        process: Process,
        metrics: ServingMetrics,
        cfg: ServingConfig,
        parity_process: Process | None = None,
    ) -> BatchProcessor:
        return cls(process, metrics, cfg.message_limit, cfg.max_inflight, parity_process)

    async def handle(self, batch: coded_pb2.Batch) -> coded_pb2.BatchResult:
        """One batch; raises ServingError subclasses (mapped to status codes at the edge)."""
        received = time.perf_counter()
        try:
            if batch.cancel:
                raise InvalidInput("cancel is only meaningful on a stream")
            if not batch.tensors:
                raise InvalidInput("batch has no tensors")
            arrays = arrays_from_proto(batch.tensors, max_bytes=self.max_message_bytes)
            process = self.parity_process if batch.parity and self.parity_process else self.process
            computed = await process(arrays)
        except asyncio.CancelledError:
            self.metrics.record_failure(Cancelled.reason, (time.perf_counter() - received) * 1e6)
            raise
        except Exception as error:
            reason = error.reason if isinstance(error, ServingError) else ServingError.reason
            self.metrics.record_failure(reason, (time.perf_counter() - received) * 1e6)
            raise
        request_us = (time.perf_counter() - received) * 1e6
        queue_us = max(request_us - computed.compute_us, 0.0)  # decoding, injected delay, thread hand-off
        rows = computed.rows
        if rows is None:
            first = next(iter(arrays.values()))
            rows = first.shape[0] if first.ndim else 1
        self.metrics.record_success(RequestTiming(rows, request_us, queue_us, computed.compute_us))
        return coded_pb2.BatchResult(
            group_id=batch.group_id,
            index=batch.index,
            tensors=arrays_to_proto(computed.outputs),
            queue_us=int(queue_us),
            compute_us=int(computed.compute_us),
        )

    def respond(self, batches: AsyncIterator[coded_pb2.Batch]) -> AsyncIterator[coded_pb2.BatchResult]:
        """The batches of one stream processed concurrently (at most max_inflight at once), one result per
        batch in completion order; a batch with `cancel` set withdraws the in-flight batch with its
        (group_id, index)."""
        slots = asyncio.Semaphore(self.max_inflight)

        async def answer(batch: coded_pb2.Batch) -> coded_pb2.BatchResult:
            async with slots:
                return await self.handle(batch)

        responder = StreamResponder(
            answer, failed, self.max_inflight * PENDING_PER_SLOT, Withdrawal(_batch_key, _is_cancel)
        )
        return responder.respond(batches)


def _batch_key(batch: object) -> BatchKey:
    assert isinstance(batch, coded_pb2.Batch)
    return (batch.group_id, batch.index)


def _is_cancel(batch: object) -> bool:
    return bool(getattr(batch, "cancel", False))


def failed(batch: coded_pb2.Batch, error: BaseException) -> coded_pb2.BatchResult:
    return coded_pb2.BatchResult(group_id=batch.group_id, index=batch.index, error=batch_status(error))


def model_description(model: OnnxModel | None, cfg: ServingConfig, role: str) -> coded_pb2.ModelDescription:
    """What a service runs; `model` is None for the ParM decoder, which runs no model."""

    def specs(tensors: tuple[TensorSpec, ...]) -> list[coded_pb2.TensorSpec]:
        return [coded_pb2.TensorSpec(name=t.name, datatype=t.datatype, shape=t.shape) for t in tensors]

    description = coded_pb2.ModelDescription(mode=cfg.mode, k=cfg.k, role=role)
    if model is not None:
        description.model_name = model.name
        description.inputs.extend(specs(model.inputs))
        description.outputs.extend(specs(model.outputs))
        description.execution_provider = model.provider
    return description


class DescribedServicer:
    """`Describe`, the one RPC the worker, encoder and decoder services share by name; each servicer adds
    its two Batch RPCs (unary and stream) on top."""

    def __init__(
        self, batches: BatchProcessor, model: OnnxModel | None, cfg: ServingConfig, role: str
    ) -> None:
        self._batches, self._model, self._cfg, self._role = batches, model, cfg, role

    async def Describe(
        self, request: coded_pb2.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> coded_pb2.ModelDescription:
        return model_description(self._model, self._cfg, self._role)
