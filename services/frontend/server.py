"""Frontend service: the Open Inference Protocol endpoint in front of the coded worker pool.

    python -m services.frontend.server --workers dns:///worker:8001 --encoder h:p --decoder h:p
    python -m services.frontend.server --workers h:p,h:p --parity-worker h:p --encoder h:p --decoder h:p

Settings: CODED_* env vars or flags (coded_invnet.serving.config, service "frontend"). Without a parity
worker the workers are one pool of any size (parity batches go to pool workers too); with one, the
first k workers are the fixed data slots. Discovered targets (dns:///, file:///) are resolved again
every `discovery_interval_s`. Health stays NOT_SERVING until a data worker has described its model
(input name and shape) and the output of a zero image is known (the padding rows of partial groups).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from coded_invnet.proto import inference_pb2, inference_pb2_grpc
from coded_invnet.rpc.lifecycle import ServiceHost, run_service
from coded_invnet.serving.config import DECODABLE_MODES, ServingConfig
from coded_invnet.serving.errors import Unavailable
from coded_invnet.serving.memory import MemoryReturner
from coded_invnet.serving.metrics import ServingMetrics
from services.frontend.backends import GrpcBackends, check_targets, targets
from services.frontend.batcher import Batcher
from services.frontend.discovery import is_discovered, resolve
from services.frontend.group import GroupReport
from services.frontend.inference import InferenceService, ModelSpec
from services.frontend.servicer import InferenceServicer

log = logging.getLogger(__name__)
SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
DESCRIBE_WAIT_S = 60.0  # workers may still be loading their models
RETRY_DESCRIBE_S = 1.0
MEMORY_TRIM_INTERVAL_S = 2.0  # clients' large requests come and go: hand their memory back soon after
Resolve = Callable[[Sequence[str]], list[str]]


class Frontend:
    """The frontend's parts, wired (inside a running event loop); `start()`, then `host.stop()`, which
    closes the batcher, the rediscovery task and the backend channels too."""

    def __init__(self, cfg: ServingConfig, resolve: Resolve = resolve) -> None:
        check_targets(cfg)
        self.cfg = cfg
        self.spec: ModelSpec | None = None
        self._resolve = resolve
        self._rediscovery: asyncio.Task[None] | None = None
        self._memory = MemoryReturner(MEMORY_TRIM_INTERVAL_S)
        metrics = ServingMetrics(cfg.model_name)
        self.host = ServiceHost(cfg, [SERVICE_NAME], metrics)
        self._targets = targets(cfg)
        self.backends = GrpcBackends(cfg, metrics)
        self.batcher = Batcher(cfg, self.backends, on_group=self._record_group)
        service = InferenceService(
            self.batcher, cfg.model_name, metrics, self._spec, cfg.message_limit, cfg.request_bytes_budget
        )
        inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(service, cfg.mode), self.host.server
        )
        self.host.add_cleanup(self._close)

    def _spec(self) -> ModelSpec | None:
        return self.spec  # None until a data worker has described its model

    @property
    def port(self) -> int:
        return self.host.port

    async def start(self) -> None:
        """Resolve every backend kind once (a fixed layout short of k workers fails here; a pool may
        start empty), then serve."""
        for kind, found in self._targets.items():
            if is_discovered(found) and not (kind == "worker" and self.backends.fixed):
                await self._discover(kind)
            else:
                await self.backends.update(kind, self._resolve(found))
        self._memory.start()
        self.batcher.start()
        if any(is_discovered(found) for found in self._targets.values()):
            self._rediscovery = asyncio.create_task(self._rediscover_forever(), name="rediscovery")
        await self.host.start(self._describe)

    async def _close(self) -> None:
        """After the host stopped answering: finish in-flight groups, close the backend channels."""
        if self._rediscovery is not None:
            self._rediscovery.cancel()
            await asyncio.gather(self._rediscovery, return_exceptions=True)
        await self.batcher.stop()
        await self.backends.close()
        await self._memory.stop()

    async def _describe(self) -> None:
        """Learn the model's shapes from a data worker, waiting for one as long as it takes (it may start
        later, or move: each attempt asks the pool of then)."""
        while True:
            try:
                spec = await self.backends.describe_model(DESCRIBE_WAIT_S)
                await self.batcher.learn_padding(spec.image_shape)
            except Unavailable as error:
                log.warning("no data worker is ready; waiting", extra={"error": str(error)})
                await asyncio.sleep(RETRY_DESCRIBE_S)
                continue
            self.spec = spec
            log.info("model described", extra={"spec": spec})
            return

    async def _rediscover_forever(self) -> None:
        """Resolve the discovered targets again every `discovery_interval_s`: workers join and leave a
        pool, a restarted pod of the fixed layout comes back with a new address its slot must follow."""
        while True:
            await asyncio.sleep(self.cfg.discovery_interval_s)
            for kind, found in self._targets.items():
                if is_discovered(found):
                    await self._discover(kind)

    async def _discover(self, kind: str) -> None:
        try:
            found = await asyncio.to_thread(self._resolve, self._targets[kind])
            before = self.backends.pools[kind].members
            await self.backends.update(kind, found)
        except Unavailable as error:
            log.warning(
                "discovery failed; keeping the known backends", extra={"kind": kind, "error": str(error)}
            )
            return
        if self.backends.pools[kind].members != before:
            log.info("backends changed", extra={"kind": kind, "before": before, "after": found})
            if kind == "worker" and self.backends.pool_short:
                log.warning(
                    "fewer pool workers than k + r: groups share workers, one failure may cost more than r",
                    extra={"workers": len(found), "k": self.cfg.k, "parities": self.cfg.group_parities},
                )

    def _record_group(self, report: GroupReport) -> None:
        metrics = self.host.metrics
        if self.cfg.mode in DECODABLE_MODES:
            metrics.record_parity_path(self.cfg.mode, report.parity_started)
        if report.reconstructed_batches:
            metrics.record_decode(self.cfg.mode, report.decode_seconds * 1e6)


async def start(cfg: ServingConfig, resolve: Resolve = resolve) -> Frontend:
    """A started frontend: answering at once, NOT_SERVING until its data workers have answered."""
    frontend = Frontend(cfg, resolve)
    await frontend.start()
    return frontend


async def serve(cfg: ServingConfig) -> None:
    frontend = await start(cfg)
    await frontend.host.run_until_signalled()


def main() -> None:
    run_service("frontend", serve)


if __name__ == "__main__":
    main()
