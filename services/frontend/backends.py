"""gRPC implementation of the batcher's `Backends`: data workers, encoder, parity worker, decoder.

With `backend_transport=stream` (the default) every backend is reached over one long-lived
bidirectional stream carrying many batches at once (`BatchStream`: a deadline per batch, in-stream
cancellation); with `unary`, each batch is one RPC with its own deadline and UNAVAILABLE retries from
the channel's service config. Either way, cancelling the awaiting task withdraws the batch at the
backend: that is how a straggler's call is cancelled.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from coded_invnet.proto import coded_pb2, coded_pb2_grpc
from coded_invnet.serving.batch_stream import BatchStream
from coded_invnet.serving.channels import create_channel
from coded_invnet.serving.config import DECODABLE_MODES, ServingConfig
from coded_invnet.serving.errors import ConfigError, Unavailable
from coded_invnet.serving.tensors import arrays_from_proto, arrays_to_proto
from services.frontend.batcher import WorkerOutput

DNS_SCHEME = "dns:///"


def resolve_workers(targets: Sequence[str], k: int) -> list[str]:
    """Static "host:port" list, or one "dns:///name:port" whose A records are the workers.

    For Kubernetes, point the DNS name at a headless Service over the worker StatefulSet: its records
    are the pod IPs; sorted, so every frontend replica deals batch j to the same worker.
    """
    if len(targets) == 1 and targets[0].startswith(DNS_SCHEME):
        host, _, port = targets[0].removeprefix(DNS_SCHEME).rpartition(":")
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except (socket.gaierror, ValueError) as exc:
            raise Unavailable(f"cannot resolve workers {targets[0]!r}: {exc}") from None
        addresses = sorted({str(info[4][0]) for info in infos})
        found = [f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in addresses]
    else:
        found = list(targets)
    if len(found) < k:
        raise Unavailable(f"found {len(found)} data workers ({', '.join(found) or 'none'}); k={k} needed")
    return found[:k]


def check_targets(cfg: ServingConfig) -> None:
    if not cfg.workers:
        raise ConfigError("CODED_WORKERS (--workers) names no data worker")
    if cfg.mode in DECODABLE_MODES and not (cfg.parity_worker and cfg.encoder and cfg.decoder):
        raise ConfigError(
            f"mode {cfg.mode} needs CODED_PARITY_WORKER, CODED_ENCODER and CODED_DECODER; "
            "without them use mode none or replication"
        )


@dataclass(frozen=True)
class ModelSpec:
    """The data workers' model as the frontend serves it."""

    input_name: str
    image_shape: tuple[int, ...]  # (C, H, W)
    num_classes: int


class GrpcBackends:
    """Channels and stubs to every backend; create inside the event loop, `close()` when done."""

    def __init__(self, cfg: ServingConfig, workers: Sequence[str]) -> None:
        def channel(target: str) -> grpc.aio.Channel:
            return create_channel(
                target, timeout_s=cfg.rpc_timeout_s, max_message_bytes=cfg.max_message_bytes
            )

        self._cfg = cfg
        self._channels = [channel(t) for t in workers]
        self._workers = [coded_pb2_grpc.WorkerStub(c) for c in self._channels]
        self._streams: dict[str, BatchStream] = {}
        self._routes = {
            f"data worker {i}": (stub.Infer, stub.InferStream) for i, stub in enumerate(self._workers)
        }
        if cfg.mode in DECODABLE_MODES:
            parity, encoder, decoder = channel(cfg.parity_worker), channel(cfg.encoder), channel(cfg.decoder)
            self._channels += [parity, encoder, decoder]
            parity_stub = coded_pb2_grpc.WorkerStub(parity)
            encoder_stub = coded_pb2_grpc.EncoderStub(encoder)
            decoder_stub = coded_pb2_grpc.DecoderStub(decoder)
            self._routes["parity worker"] = (parity_stub.Infer, parity_stub.InferStream)
            self._routes["encoder"] = (encoder_stub.Encode, encoder_stub.EncodeStream)
            self._routes["decoder"] = (decoder_stub.Decode, decoder_stub.DecodeStream)
        if cfg.backend_transport == "stream":
            self._streams = {who: BatchStream(stream, who) for who, (_, stream) in self._routes.items()}

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self._streams.values()))
        await asyncio.gather(*(c.close(None) for c in self._channels))

    async def describe_model(self, wait_s: float) -> ModelSpec:
        """Ask data worker 0 for its model's input and output shapes, waiting (up to wait_s) for it to
        come up and load its model."""
        give_up_at = asyncio.get_running_loop().time() + wait_s
        while True:
            left = give_up_at - asyncio.get_running_loop().time()
            description = await self._workers[0].Describe(
                coded_pb2.DescribeRequest(), timeout=max(left, 0.01), wait_for_ready=True
            )
            inputs = {t.name: t for t in description.inputs}
            outputs = {t.name: t for t in description.outputs}
            if len(inputs) == 1 and "logits" in outputs:
                (spec,) = inputs.values()
                return ModelSpec(
                    spec.name, tuple(int(d) for d in spec.shape[1:]), int(outputs["logits"].shape[-1])
                )
            if left <= 0:
                raise Unavailable(f"data worker model has inputs {list(inputs)} and outputs {list(outputs)}")
            await asyncio.sleep(0.05)  # still loading its model

    async def _call(self, who: str, group_id: int, index: int, **arrays: np.ndarray) -> dict:
        batch = coded_pb2.Batch(group_id=group_id, index=index, tensors=arrays_to_proto(arrays))
        if who in self._streams:
            result = await self._streams[who].call(batch, self._cfg.rpc_timeout_s)
        else:
            try:
                result = await self._routes[who][0](batch, timeout=self._cfg.rpc_timeout_s)
            except grpc.aio.AioRpcError as exc:
                raise Unavailable(f"{who}: {exc.code().name} {exc.details()}") from None
        if result.HasField("error"):
            raise Unavailable(f"{who}: status {result.error.code} {result.error.message}")
        return arrays_from_proto(result.tensors, max_bytes=self._cfg.max_message_bytes)

    async def infer(self, worker: int, group_id: int, index: int, images: np.ndarray) -> WorkerOutput:
        out = await self._call(f"data worker {worker}", group_id, index, x=images)
        return WorkerOutput(out["logits"], out.get("z"))

    async def encode(self, group_id: int, batches: np.ndarray) -> np.ndarray:
        k = batches.shape[1]
        return (await self._call("encoder", group_id, k, x=batches))["parity"]

    async def infer_parity(self, group_id: int, parity_images: np.ndarray) -> np.ndarray:
        out = await self._call("parity worker", group_id, self._cfg.k, x=parity_images)
        return out["z"] if self._cfg.mode == "coded-invnet" else out["logits"]

    async def decode(
        self, group_id: int, missing: int, parity: np.ndarray, available: np.ndarray
    ) -> np.ndarray:
        out = await self._call("decoder", group_id, missing, parity=parity, available=available)
        return out["logits"]
