"""Decoder gRPC servicer: proto ↔ domain only."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from coded_invnet.proto import coded_pb2, coded_pb2_grpc
from coded_invnet.rpc.batch_service import DescribedServicer


class DecoderServicer(DescribedServicer, coded_pb2_grpc.DecoderServicer):
    async def Decode(
        self, request: coded_pb2.Batch, context: grpc.aio.ServicerContext
    ) -> coded_pb2.BatchResult:
        return await self._batches.handle(request)

    async def DecodeStream(
        self, request_iterator: AsyncIterator[coded_pb2.Batch], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[coded_pb2.BatchResult]:
        async for result in self._batches.respond(request_iterator):
            yield result
