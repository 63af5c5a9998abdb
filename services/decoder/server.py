"""Decoder server: `python -m services.decoder.server [--flags]`. coded-invnet: the missing members'
latents ẑ_S = A[P, S]⁻¹ (z_P − Σ_{i∉S} A[P, i] z_i) (one parity: ẑ_j = k·z_p − Σ_{i≠j} z_i), then
head.onnx; parm: the same solve in logit space (no model)."""

from __future__ import annotations

import asyncio

from coded_invnet.proto import coded_pb2_grpc
from coded_invnet.rpc.batch_service import BatchProcessor
from coded_invnet.rpc.lifecycle import ServiceHost, run_service
from coded_invnet.serving.config import ServingConfig, require_decodable_mode
from coded_invnet.serving.metrics import ServingMetrics
from coded_invnet.serving.onnx_model import open_model
from services.decoder.runtime import DecoderRuntime
from services.decoder.servicer import DecoderServicer

SERVICE_NAME = "coded.v1.Decoder"


async def start(cfg: ServingConfig) -> ServiceHost:
    """A started decoder: answering at once, NOT_SERVING until its head is loaded and warmed up."""
    require_decodable_mode(cfg)
    head = open_model(cfg) if cfg.mode == "coded-invnet" else None
    metrics = ServingMetrics(head.name if head else "parm-decoder")
    runtime = DecoderRuntime(cfg.mode, cfg.k, cfg.parities, head, metrics)
    host = ServiceHost(cfg, [SERVICE_NAME], metrics)
    servicer = DecoderServicer(BatchProcessor.for_config(runtime.decode, metrics, cfg), head, cfg, "decoder")
    coded_pb2_grpc.add_DecoderServicer_to_server(servicer, host.server)
    await host.start(lambda: asyncio.to_thread(runtime.warm_up))
    return host


async def serve(cfg: ServingConfig) -> None:
    """Run the decoder until SIGTERM or SIGINT, then drain its in-flight batches and stop."""
    host = await start(cfg)
    await host.run_until_signalled()


def main() -> None:
    run_service("decoder", serve)


if __name__ == "__main__":
    main()
