"""gRPC implementation of the batcher's `Backends`: data workers, encoder, parity worker, decoder.

Every backend is reached over one long-lived bidirectional stream carrying many batches at once
(`BatchStream`: a deadline per batch, in-stream cancellation, reopened when it breaks). Cancelling the
awaiting task withdraws the batch at the backend: that is how a straggler's call is cancelled.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coded_invnet.proto import coded_pb2, coded_pb2_grpc
from coded_invnet.serving.batch_stream import BatchStream
from coded_invnet.serving.channels import client_tls, create_channel
from coded_invnet.serving.config import BACKEND_MAX_MESSAGE_BYTES, DECODABLE_MODES, ServingConfig
from coded_invnet.serving.errors import ConfigError, Unavailable
from coded_invnet.serving.tensors import arrays_from_proto, arrays_to_proto
from services.frontend.group import WorkerOutput
from services.frontend.inference import ModelSpec

DNS_SCHEME = "dns:///"


def is_dns_target(targets: Sequence[str]) -> bool:
    return len(targets) == 1 and targets[0].startswith(DNS_SCHEME)


def resolve_workers(targets: Sequence[str], k: int) -> list[str]:
    """Static "host:port" list, or one "dns:///name:port" whose A records are the workers.

    For Kubernetes, point the DNS name at a headless Service over the worker StatefulSet: its records
    are the pod IPs; sorted, so every frontend replica deals batch j to the same worker.
    """
    if is_dns_target(targets):
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


class GrpcBackends:
    """Channels and stubs to every backend; create inside the event loop, `close()` when done."""

    def __init__(self, cfg: ServingConfig, workers: Sequence[str]) -> None:
        self._cfg = cfg
        self._channels: dict[str, grpc.aio.Channel] = {}  # by backend ("data worker 3", "encoder", ...)
        self._streams: dict[str, BatchStream] = {}
        self._retiring: set[asyncio.Task[None]] = set()  # closing the channels of moved workers
        self.workers = list(workers)
        for i, target in enumerate(workers):
            self._connect(f"data worker {i}", target, coded_pb2_grpc.WorkerStub, "Infer")
        if cfg.mode in DECODABLE_MODES:
            self._connect("parity worker", cfg.parity_worker, coded_pb2_grpc.WorkerStub, "Infer")
            self._connect("encoder", cfg.encoder, coded_pb2_grpc.EncoderStub, "Encode")
            self._connect("decoder", cfg.decoder, coded_pb2_grpc.DecoderStub, "Decode")

    def _connect(self, who: str, target: str, stub_type: Any, method: str) -> None:
        channel = create_channel(
            target,
            timeout_s=self._cfg.rpc_timeout_s,
            max_message_bytes=BACKEND_MAX_MESSAGE_BYTES,
            tls=client_tls(self._cfg),
        )
        self._channels[who] = channel
        self._streams[who] = BatchStream(getattr(stub_type(channel), method + "Stream"), who)

    async def replace_workers(self, workers: Sequence[str]) -> None:
        """Point the data-worker slots whose address changed (a pod restarted with a new IP) at their new
        address; batches in flight to an old one fail and are recovered like any failure."""
        assert len(workers) == len(self.workers), "the number of data workers is fixed (k)"
        for i, (old, new) in enumerate(zip(self.workers, workers, strict=True)):
            if old == new:
                continue
            who = f"data worker {i}"
            stream, channel = self._streams.pop(who, None), self._channels.pop(who)
            self._connect(who, new, coded_pb2_grpc.WorkerStub, "Infer")
            self.workers[i] = new
            if stream is not None:
                await stream.close()  # its batches fail with UNAVAILABLE and are recovered
            # closing the channel now would cancel unary calls on it (a Describe) instead of failing
            # them: let them reach their deadlines first
            retire = asyncio.create_task(self._close_later(channel))
            self._retiring.add(retire)
            retire.add_done_callback(self._retiring.discard)

    async def _close_later(self, channel: grpc.aio.Channel) -> None:
        try:
            await asyncio.sleep(self._cfg.rpc_timeout_s)
        finally:
            await channel.close(None)

    async def close(self) -> None:
        for retire in list(self._retiring):
            retire.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        await asyncio.gather(*(s.close() for s in self._streams.values()))
        await asyncio.gather(*(c.close(None) for c in self._channels.values()))

    async def describe_model(self, wait_s: float) -> ModelSpec:
        """Wait (up to wait_s) until data worker 0 is SERVING, i.e. has loaded its model, then ask it for
        its model's input and output shapes. A worker that is down fails this at once (the caller tries
        again, on the slot's channel of then: discovery may have moved it)."""
        channel = self._channels["data worker 0"]
        try:
            async with asyncio.timeout(wait_s):
                watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
                async for reply in watch:
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        watch.cancel()
                        break
                description = await coded_pb2_grpc.WorkerStub(channel).Describe(coded_pb2.DescribeRequest())
        except TimeoutError:
            raise Unavailable(f"data worker 0 was not SERVING within {wait_s:g} s") from None
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(f"data worker 0: {exc.code().name} {exc.details()}") from None
        inputs = {t.name: t for t in description.inputs}
        outputs = {t.name: t for t in description.outputs}
        if len(inputs) != 1 or "logits" not in outputs:
            raise Unavailable(f"data worker model has inputs {list(inputs)} and outputs {list(outputs)}")
        (spec,) = inputs.values()
        return ModelSpec(spec.name, tuple(int(d) for d in spec.shape[1:]), int(outputs["logits"].shape[-1]))

    async def _call(self, who: str, group_id: int, index: int, **arrays: np.ndarray) -> dict:
        batch = coded_pb2.Batch(group_id=group_id, index=index, tensors=arrays_to_proto(arrays))
        result = await self._streams[who].call(batch, self._cfg.rpc_timeout_s)
        if result.HasField("error"):
            raise Unavailable(f"{who}: status {result.error.code} {result.error.message}")
        return arrays_from_proto(result.tensors, max_bytes=BACKEND_MAX_MESSAGE_BYTES)

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
