"""Decoder server: `python -m services.decoder.server [--flags]`. coded-invnet: ẑ_j = k·z_p − Σ_{i≠j} z_i,
then head.onnx; parm: the same subtraction in logit space (no model)."""

from __future__ import annotations

from coded_invnet.proto import coded_pb2_grpc
from coded_invnet.serving.batch_service import BatchService
from coded_invnet.serving.config import ServingConfig, require_decodable_mode
from coded_invnet.serving.lifecycle import ServiceHost, entry_points
from coded_invnet.serving.metrics import ServingMetrics
from coded_invnet.serving.onnx_model import open_model
from services.decoder.runtime import DecoderRuntime
from services.decoder.servicer import DecoderServicer

SERVICE_NAME = "coded.v1.Decoder"


async def start(cfg: ServingConfig) -> ServiceHost:
    require_decodable_mode(cfg)
    head = open_model(cfg) if cfg.mode == "coded-invnet" else None
    metrics = ServingMetrics(head.name if head else "parm-decoder")
    runtime = DecoderRuntime(cfg.mode, cfg.k, head, metrics)
    host = ServiceHost(cfg, [SERVICE_NAME], metrics)
    batches = BatchService.for_config(runtime.decode, metrics, cfg)
    servicer = DecoderServicer(batches, head, cfg, "decoder")
    coded_pb2_grpc.add_DecoderServicer_to_server(servicer, host.server)
    await host.start(runtime.warm_up)
    return host


create_server, serve, main = entry_points("decoder", start)

if __name__ == "__main__":
    main()
