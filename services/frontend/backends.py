"""gRPC implementation of the batcher's `Backends`: workers, encoders, decoders, each kind a `Pool`.

Every backend address is reached over one long-lived bidirectional stream carrying many batches at once
(`BatchStream`: a deadline per batch, in-stream cancellation, reopened when it breaks). Cancelling the
awaiting task withdraws the batch at the backend: that is how a straggler's call is cancelled. Each call
counts as in flight on its address while it runs (`Pool.started` / `finished`): that is the load the
placement of groups and the choice of an encoder or decoder go by.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coded_invnet.proto import coded_pb2, coded_pb2_grpc
from coded_invnet.rpc.batch_stream import BatchStream
from coded_invnet.rpc.channels import client_tls, create_channel
from coded_invnet.rpc.proto_tensors import arrays_from_proto, arrays_to_proto
from coded_invnet.serving.config import BACKEND_MAX_MESSAGE_BYTES, DECODABLE_MODES, ServingConfig
from coded_invnet.serving.errors import ConfigError, Unavailable
from coded_invnet.serving.metrics import ServingMetrics
from services.frontend.calls import WorkerOutput
from services.frontend.inference import ModelSpec
from services.frontend.pool import NO_MEMBER, Placement, Pool, place_in_pool, place_in_slots

# backend kind → (stub, stream method prefix)
STUBS: dict[str, tuple[Any, str]] = {
    "worker": (coded_pb2_grpc.WorkerStub, "Infer"),
    "encoder": (coded_pb2_grpc.EncoderStub, "Encode"),
    "decoder": (coded_pb2_grpc.DecoderStub, "Decode"),
}


def check_targets(cfg: ServingConfig) -> None:
    if not cfg.workers:
        raise ConfigError("CODED_WORKERS (--workers) names no data worker")
    if cfg.mode in DECODABLE_MODES and not (cfg.encoder and cfg.decoder):
        raise ConfigError(
            f"mode {cfg.mode} needs CODED_ENCODER and CODED_DECODER (CODED_PARITY_WORKER too for the fixed "
            "layout; without it parity batches go to the pool); without them use mode none or replication"
        )
    if cfg.parity_worker and cfg.group_parities > 1:
        raise ConfigError(
            f"CODED_PARITY_WORKER names one parity worker; CODED_PARITIES={cfg.parities} needs the pool "
            "(leave CODED_PARITY_WORKER empty)"
        )
    listed = [w for w in cfg.workers if "://" not in w]  # addresses, not a discovery source
    group = cfg.k + cfg.group_parities
    if cfg.group_parities > 1 and listed and len(listed) < group:
        raise ConfigError(
            f"CODED_WORKERS lists {len(listed)} workers; a group of k={cfg.k} data and "
            f"CODED_PARITIES={cfg.parities} parity batches needs {group} distinct ones"
        )


def targets(cfg: ServingConfig) -> dict[str, tuple[str, ...]]:
    """Each backend kind's configured targets (fixed addresses or one discovery source)."""
    found = {"worker": cfg.workers}
    if cfg.mode in DECODABLE_MODES:
        found |= {"encoder": (cfg.encoder,), "decoder": (cfg.decoder,)}
    return found


class GrpcBackends:
    """Channels and streams to every backend address; create inside the event loop, give each kind its
    addresses with `update` (again whenever discovery finds others), `close()` when done."""

    def __init__(self, cfg: ServingConfig, metrics: ServingMetrics | None = None) -> None:
        self._cfg, self._metrics = cfg, metrics
        self.fixed = bool(cfg.parity_worker) and cfg.mode in DECODABLE_MODES  # k slots + a parity worker
        self._r = cfg.group_parities
        suspect_s = cfg.discovery_interval_s
        self.pools = {kind: Pool(suspect_s=suspect_s) for kind in STUBS}
        self._slots: list[str] = []  # the fixed layout's k data workers, in slot order
        self._channels: dict[tuple[str, str], grpc.aio.Channel] = {}  # by (kind, address)
        self._streams: dict[tuple[str, str], BatchStream] = {}
        self._retiring: set[asyncio.Task[None]] = set()  # closing the streams of departed addresses

    @property
    def workers(self) -> list[str]:
        return list(self._slots) if self.fixed else self.pools["worker"].members

    @property
    def pool_short(self) -> bool:
        """Whether the pool holds workers but fewer than a group's k + r: groups then share workers, so
        one worker's failure can cost a group more members than its r parities recover."""
        found = len(self.pools["worker"].members)
        return not self.fixed and 0 < found < self._cfg.k + self._r

    async def update(self, kind: str, found: Sequence[str]) -> None:
        """Take `kind`'s addresses now; departed ones get their in-flight batches' deadline to finish
        (their failures are recovered like any other), then their channels close."""
        if kind == "worker" and self.fixed:
            if len(found) < self._cfg.k:
                raise Unavailable(
                    f"found {len(found)} data workers ({', '.join(found)}); k={self._cfg.k} needed"
                )
            self._slots = list(found[: self._cfg.k])
            found = [*self._slots, self._cfg.parity_worker]
        _joined, left = self.pools[kind].update(found)
        for address in left:
            stream, channel = (
                self._streams.pop((kind, address), None),
                self._channels.pop((kind, address), None),
            )
            if channel is not None:
                retire = asyncio.create_task(self._close_later(kind, address, stream, channel))
                self._retiring.add(retire)
                retire.add_done_callback(self._retiring.discard)

    async def _close_later(
        self, kind: str, address: str, stream: BatchStream | None, channel: grpc.aio.Channel
    ) -> None:
        try:
            async with asyncio.timeout(self._cfg.rpc_timeout_s):
                while self.pools[kind].inflight(address):
                    await asyncio.sleep(0.05)
        except TimeoutError:
            pass
        finally:
            if stream is not None:
                await stream.close()
            await channel.close(None)

    def _stream(self, kind: str, address: str) -> BatchStream:
        key = (kind, address)
        if key not in self._streams:
            channel = self._channel(kind, address)
            stub_type, method = STUBS[kind]
            self._streams[key] = BatchStream(
                getattr(stub_type(channel), method + "Stream"), f"{kind} {address}"
            )
        return self._streams[key]

    def _channel(self, kind: str, address: str) -> grpc.aio.Channel:
        key = (kind, address)
        if key not in self._channels:
            self._channels[key] = create_channel(
                address,
                timeout_s=self._cfg.rpc_timeout_s,
                max_message_bytes=BACKEND_MAX_MESSAGE_BYTES,
                tls=client_tls(self._cfg),
            )
        return self._channels[key]

    async def close(self) -> None:
        for retire in list(self._retiring):
            retire.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        await asyncio.gather(*(s.close() for s in self._streams.values()))
        await asyncio.gather(*(c.close(None) for c in self._channels.values()))

    def place(self, group_id: int, k: int) -> Placement:
        if self.fixed:
            return place_in_slots(self._slots, [self._cfg.parity_worker], group_id)
        return place_in_pool(self.pools["worker"], k, self._r, group_id)

    def parallel_groups(self, k: int) -> int:
        if self.fixed:
            return 1
        return max(1, len(self.pools["worker"].members) // (k + self._r))

    async def describe_model(self, wait_s: float) -> ModelSpec:
        """Wait (up to wait_s) until a data worker is SERVING, i.e. has loaded its model, then ask it for
        its model's input and output shapes. A worker that is down fails this at once and becomes a
        suspect (the caller tries again, on the least suspect worker of then)."""
        address = self.place(0, self._cfg.k).data[0]
        try:
            if address == NO_MEMBER:
                raise Unavailable("the worker pool has no members")
            channel = self._channel("worker", address)
            async with asyncio.timeout(wait_s):
                watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
                async for reply in watch:
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        watch.cancel()
                        break
                description = await coded_pb2_grpc.WorkerStub(channel).Describe(coded_pb2.DescribeRequest())
        except TimeoutError:
            raise Unavailable(f"worker {address} was not SERVING within {wait_s:g} s") from None
        except grpc.aio.AioRpcError as exc:
            self.pools["worker"].failed(address)
            raise Unavailable(f"worker {address}: {exc.code().name} {exc.details()}") from None
        inputs = {t.name: t for t in description.inputs}
        outputs = {t.name: t for t in description.outputs}
        if len(inputs) != 1 or "logits" not in outputs:
            raise Unavailable(f"data worker model has inputs {list(inputs)} and outputs {list(outputs)}")
        (spec,) = inputs.values()
        return ModelSpec(spec.name, tuple(int(d) for d in spec.shape[1:]), int(outputs["logits"].shape[-1]))

    async def _call(
        self,
        kind: str,
        address: str,
        group_id: int,
        index: int,
        parity_batch: bool = False,
        **arrays: np.ndarray,
    ) -> dict:
        if address == NO_MEMBER:
            raise Unavailable(f"no {kind} is known (discovery found none)")
        batch = coded_pb2.Batch(
            group_id=group_id, index=index, tensors=arrays_to_proto(arrays), parity=parity_batch
        )
        stream, pool = self._stream(kind, address), self.pools[kind]
        pool.started(address)
        if self._metrics is not None:
            self._metrics.record_backend_batch(kind, address)
        failed = True  # the stream broke or the deadline passed: the address becomes a suspect
        try:
            result = await stream.call(batch, self._cfg.rpc_timeout_s)
            failed = False
        except asyncio.CancelledError:
            failed = False  # withdrawn: says nothing of the backend
            raise
        finally:
            pool.finished(address, failed)
        if result.HasField("error"):
            raise Unavailable(f"{kind} {address}: status {result.error.code} {result.error.message}")
        return arrays_from_proto(result.tensors, max_bytes=BACKEND_MAX_MESSAGE_BYTES)

    def _least_loaded(self, kind: str) -> str:
        return self.pools[kind].choose(1)[0]

    async def infer(self, worker: str, group_id: int, index: int, images: np.ndarray) -> WorkerOutput:
        out = await self._call("worker", worker, group_id, index, x=images)
        return WorkerOutput(out["logits"], out.get("z"))

    async def encode(self, group_id: int, batches: np.ndarray) -> np.ndarray:
        k = batches.shape[1]
        out = await self._call("encoder", self._least_loaded("encoder"), group_id, k, x=batches)
        parity = out["parity"]  # (b, C, H, W) from a one-parity encoder, (b, r, C, H, W) otherwise
        if parity.ndim == batches.ndim - 1:
            parity = parity[:, None]
        if parity.shape[:2] != (batches.shape[0], self._r):
            raise Unavailable(f"encoder answered parity {list(parity.shape)}; {self._r} parities expected")
        return parity

    async def infer_parity(
        self, worker: str, group_id: int, row: int, parity_images: np.ndarray
    ) -> np.ndarray:
        out = await self._call(
            "worker", worker, group_id, self._cfg.k + row, parity_batch=True, x=parity_images
        )
        return out["z"] if self._cfg.mode == "coded-invnet" else out["logits"]

    async def decode(
        self,
        group_id: int,
        missing: Sequence[int],
        parity_rows: Sequence[int],
        parities: np.ndarray,
        members: np.ndarray,
    ) -> np.ndarray:
        out = await self._call(
            "decoder",
            self._least_loaded("decoder"),
            group_id,
            missing[0],
            parities=parities,
            members=members,
            missing=np.asarray(missing, dtype=np.int64),
            parity_rows=np.asarray(parity_rows, dtype=np.int64),
        )
        return out["logits"]
