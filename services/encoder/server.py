"""Encoder server: `python -m services.encoder.server [--flags]`. Runs encoder_k{k}.onnx (coded-invnet)
or parm_encoder_k{k}.onnx (parm) over groups "x" [B, k, C, H, W] and answers "parity" [B, C, H, W] to
the caller, who sends it on to the parity worker (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import asyncio

from coded_invnet.proto import coded_pb2_grpc
from coded_invnet.serving.batch_service import BatchProcessor
from coded_invnet.serving.config import ServingConfig, require_decodable_mode
from coded_invnet.serving.lifecycle import ServiceHost, run_service
from coded_invnet.serving.metrics import ServingMetrics
from coded_invnet.serving.onnx_model import open_model
from services.encoder.servicer import EncoderServicer

SERVICE_NAME = "coded.v1.Encoder"


async def start(cfg: ServingConfig) -> ServiceHost:
    """A started encoder: answering at once, NOT_SERVING until its model is loaded and warmed up."""
    require_decodable_mode(cfg)
    model = open_model(cfg)
    metrics = ServingMetrics(model.name)
    host = ServiceHost(cfg, [SERVICE_NAME], metrics)
    servicer = EncoderServicer(BatchProcessor.for_config(model.infer, metrics, cfg), model, cfg)
    coded_pb2_grpc.add_EncoderServicer_to_server(servicer, host.server)
    await host.start(lambda: asyncio.to_thread(model.load))
    return host


async def serve(cfg: ServingConfig) -> None:
    host = await start(cfg)
    await host.run_until_signalled()


def main() -> None:
    run_service("encoder", serve)


if __name__ == "__main__":
    main()
