"""Encoder server: `python -m services.encoder.server [--flags]`. Runs encoder_k{k}.onnx (coded-invnet)
or parm_encoder_k{k}.onnx (parm) over groups "x" [B, k, C, H, W] and answers "parity" [B, C, H, W] to
the caller, who sends it on to the parity worker (docs/ARCHITECTURE.md)."""

from __future__ import annotations

from coded_invnet.proto import coded_pb2_grpc
from coded_invnet.serving.batch_service import BatchService
from coded_invnet.serving.config import ServingConfig, require_decodable_mode
from coded_invnet.serving.lifecycle import ServiceHost, entry_points
from coded_invnet.serving.metrics import ServingMetrics
from coded_invnet.serving.onnx_model import open_model
from services.encoder.servicer import EncoderServicer

SERVICE_NAME = "coded.v1.Encoder"


async def start(cfg: ServingConfig) -> ServiceHost:
    require_decodable_mode(cfg)
    model = open_model(cfg)
    metrics = ServingMetrics(model.name)
    host = ServiceHost(cfg, [SERVICE_NAME], metrics)
    servicer = EncoderServicer(BatchService.for_config(model.infer, metrics, cfg), model, cfg, "encoder")
    coded_pb2_grpc.add_EncoderServicer_to_server(servicer, host.server)
    await host.start(model.load)
    return host


create_server, serve, main = entry_points("encoder", start)

if __name__ == "__main__":
    main()
