"""Encoder gRPC servicer: proto ↔ domain only (the shared BatchServicer under the Encoder RPC names)."""

from __future__ import annotations

from coded_invnet.proto import coded_pb2_grpc
from coded_invnet.serving.batch_service import BatchServicer


class EncoderServicer(BatchServicer, coded_pb2_grpc.EncoderServicer):
    Encode = BatchServicer.unary
    EncodeStream = BatchServicer.stream
    Describe = BatchServicer.describe
