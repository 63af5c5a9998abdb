"""Encoder gRPC servicer: proto ↔ domain only."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from coded_invnet.proto import coded_pb2, coded_pb2_grpc
from coded_invnet.serving.batch_service import BatchProcessor, model_description
from coded_invnet.serving.config import ServingConfig
from coded_invnet.serving.onnx_model import OnnxModel


class EncoderServicer(coded_pb2_grpc.EncoderServicer):
    def __init__(self, batches: BatchProcessor, model: OnnxModel, cfg: ServingConfig) -> None:
        self._batches, self._model, self._cfg = batches, model, cfg

    async def Encode(
        self, request: coded_pb2.Batch, context: grpc.aio.ServicerContext
    ) -> coded_pb2.BatchResult:
        return await self._batches.handle(request)

    async def EncodeStream(
        self, request_iterator: AsyncIterator[coded_pb2.Batch], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[coded_pb2.BatchResult]:
        async for result in self._batches.respond(request_iterator):
            yield result

    async def Describe(
        self, request: coded_pb2.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> coded_pb2.ModelDescription:
        return model_description(self._model, self._cfg, "encoder")
