"""Frontend service: the Open Inference Protocol endpoint in front of the coded worker pool.

    python -m services.frontend.server --workers h:p,h:p --parity-worker h:p --encoder h:p --decoder h:p

Settings: CODED_* env vars or flags (coded_invnet.serving.config, service "frontend"). Health stays
NOT_SERVING until data worker 0 has described its model (input name and shape).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from coded_invnet.proto import inference_pb2, inference_pb2_grpc
from coded_invnet.serving.config import DECODABLE_MODES, ServingConfig
from coded_invnet.serving.errors import Unavailable
from coded_invnet.serving.lifecycle import ServiceHost, run_service
from coded_invnet.serving.metrics import ServingMetrics
from services.frontend.backends import GrpcBackends, ModelSpec, check_targets, is_dns_target, resolve_workers
from services.frontend.batcher import Batcher, GroupReport
from services.frontend.servicer import InferenceServicer

log = logging.getLogger(__name__)
SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
DESCRIBE_WAIT_S = 60.0  # workers may still be loading their models
RETRY_DESCRIBE_S = 1.0


@dataclass
class FrontendServer:
    """The frontend's parts, wired; `start()` inside the event loop, then `stop()`."""

    cfg: ServingConfig
    host: ServiceHost
    backends: GrpcBackends
    batcher: Batcher
    spec: ModelSpec | None = None
    resolve: Callable[[Sequence[str], int], list[str]] = resolve_workers
    _rediscovery: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.batcher.start()
        if is_dns_target(self.cfg.workers):
            self._rediscovery = asyncio.create_task(self._rediscover_forever(), name="rediscovery")
        # the host runs warm-up in a thread; ours is async, so that thread waits on the loop
        await self.host.start(lambda: asyncio.run_coroutine_threadsafe(self._describe(), loop).result())

    async def _describe(self) -> None:
        """Learn the model's shapes from data worker 0; retried until it answers (it may start later)."""
        while True:
            try:
                spec = await self.backends.describe_model(DESCRIBE_WAIT_S)
                await self.batcher.learn_padding(spec.image_shape)
            except (Unavailable, grpc.aio.AioRpcError) as error:
                log.warning("data worker 0 is not ready; retrying", extra={"error": str(error)})
                await asyncio.sleep(RETRY_DESCRIBE_S)
                continue
            self.spec = spec
            log.info("model described", extra={"spec": spec})
            return

    async def _rediscover_forever(self) -> None:
        """Resolve a DNS-named worker pool again every `discovery_interval_s`: a restarted pod comes
        back with a new address, which its slot must follow."""
        while True:
            await asyncio.sleep(self.cfg.discovery_interval_s)
            try:
                found = await asyncio.to_thread(self.resolve, self.cfg.workers, self.cfg.k)
            except Unavailable as error:
                log.warning("worker discovery failed; keeping the known workers", extra={"error": str(error)})
                continue
            if found != self.backends.workers:
                log.info("data workers moved", extra={"before": self.backends.workers, "after": found})
                await self.backends.replace_workers(found)

    async def close(self) -> None:
        """After the host stopped: finish in-flight groups, close the backend channels."""
        if self._rediscovery is not None:
            self._rediscovery.cancel()
        await self.batcher.stop()
        await self.backends.close()

    def record_group(self, report: GroupReport) -> None:
        if self.cfg.mode in DECODABLE_MODES:
            self.host.metrics.record_parity_path(self.cfg.mode, report.parity_started)
        if report.reconstructed_batches:
            self.host.metrics.record_decode(self.cfg.mode, report.decode_seconds * 1e6)


def build(
    cfg: ServingConfig, resolve: Callable[[Sequence[str], int], list[str]] = resolve_workers
) -> FrontendServer:
    """Wire the frontend (inside a running event loop); nothing is started yet. `resolve` finds the
    data workers (CODED_WORKERS → addresses)."""
    check_targets(cfg)
    metrics = ServingMetrics(cfg.model_name)
    host = ServiceHost(cfg, [SERVICE_NAME], metrics)
    backends = GrpcBackends(cfg, resolve(cfg.workers, cfg.k))
    frontend = FrontendServer(cfg, host, backends, Batcher(cfg, backends), resolve=resolve)
    frontend.batcher.on_group = frontend.record_group
    servicer = InferenceServicer(
        frontend.batcher, cfg.model_name, cfg.mode, metrics, lambda: frontend.spec, cfg.max_message_bytes
    )
    inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, host.server)
    return frontend


async def create_server(cfg: ServingConfig) -> tuple[grpc.aio.Server, int]:
    """A started frontend (NOT_SERVING until its data workers answer) and its port."""
    frontend = build(cfg)
    await frontend.start()
    return frontend.host.server, frontend.host.port


async def serve(cfg: ServingConfig) -> None:
    frontend = build(cfg)
    await frontend.start()
    try:
        await frontend.host.run_until_signalled()
    finally:
        await frontend.close()


def main(argv: Sequence[str] | None = None) -> None:
    run_service("frontend", serve, argv)


if __name__ == "__main__":
    main()
