"""Decoder gRPC servicer: proto ↔ domain only (the shared BatchServicer under the Decoder RPC names)."""

from __future__ import annotations

from coded_invnet.proto import coded_pb2_grpc
from coded_invnet.serving.batch_service import BatchServicer


class DecoderServicer(BatchServicer, coded_pb2_grpc.DecoderServicer):
    Decode = BatchServicer.unary
    DecodeStream = BatchServicer.stream
    Describe = BatchServicer.describe
