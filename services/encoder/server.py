"""Encoder server: `python -m services.encoder.server [--flags]`. Runs encoder_k{k}.onnx (coded-invnet)
or parm_encoder_k{k}.onnx (parm) over groups "x" [B, k, C, H, W] and answers "parity" [B, C, H, W] to
the caller, who sends it on to the parity worker (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import asyncio

from coded_invnet.proto import coded_pb2_grpc
from coded_invnet.rpc.batch_service import BatchProcessor
from coded_invnet.rpc.lifecycle import ServiceHost, run_service
from coded_invnet.serving.config import ServingConfig, require_decodable_mode
from coded_invnet.serving.errors import ConfigError
from coded_invnet.serving.metrics import ServingMetrics
from coded_invnet.serving.onnx_model import OnnxModel, open_model
from services.encoder.servicer import EncoderServicer

SERVICE_NAME = "coded.v1.Encoder"


async def start(cfg: ServingConfig) -> ServiceHost:
    """A started encoder: answering at once, NOT_SERVING until its model is loaded and warmed up."""
    require_decodable_mode(cfg)
    model = open_model(cfg)
    metrics = ServingMetrics(model.name)
    host = ServiceHost(cfg, [SERVICE_NAME], metrics)
    servicer = EncoderServicer(BatchProcessor.for_config(model.infer, metrics, cfg), model, cfg, "encoder")
    coded_pb2_grpc.add_EncoderServicer_to_server(servicer, host.server)
    await host.start(lambda: asyncio.to_thread(load_checked, model, cfg.parities))
    return host


def load_checked(model: OnnxModel, parities: int) -> None:
    """Load the model and check that it makes `parities` parity batches: "parity" [B, C, H, W] is one,
    [B, r, C, H, W] is r (a file of another r fails the warm-up, naming the setting)."""
    model.load()
    shapes = [spec.shape for spec in model.outputs if spec.name == "parity"]
    shape = shapes[0] if shapes else ()
    made = 0  # no "parity" output of either rank
    if len(shape) == 4:
        made = 1
    elif len(shape) == 5:
        made = shape[1]  # -1: dynamic, known only per batch
    if made not in (-1, parities):
        raise ConfigError(f"CODED_PARITIES={parities}, but {model.name} outputs parity {list(shape)}")


async def serve(cfg: ServingConfig) -> None:
    """Run the encoder until SIGTERM or SIGINT, then drain its in-flight batches and stop."""
    host = await start(cfg)
    await host.run_until_signalled()


def main() -> None:
    run_service("encoder", serve)


if __name__ == "__main__":
    main()
