"""The frontend's batcher: queries → coding groups → workers. Pure asyncio, no gRPC.

The backends (data workers, encoder, parity worker, decoder) come in through the `Backends` protocol,
so this logic runs the same against gRPC services and against in-process models. The parts:
`QueryQueue` (bounded, per client, batch-forming), `CodingGroup` (one group's dispatch and recovery),
`ParityDelay` (when a group's parity path starts).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable

import numpy as np

from coded_invnet.serving.config import DECODABLE_MODES, ServingConfig
from coded_invnet.serving.errors import DeadlineExceeded, InvalidInput, Unavailable
from coded_invnet.serving.policies import batching_policy, recovery_policy
from services.frontend.calls import Backends, WorkerOutput
from services.frontend.group import CodingGroup, GroupReport, QueryResult
from services.frontend.hedge import ParityDelay
from services.frontend.queue import Query, QueryQueue

ANONYMOUS = "anonymous"
log = logging.getLogger(__name__)


class Batcher:
    """Forms coding groups from submitted queries and answers each query's future."""

    def __init__(
        self,
        cfg: ServingConfig,
        backends: Backends,
        clock: Callable[[], float] = time.monotonic,
        on_group: Callable[[GroupReport], None] | None = None,
    ) -> None:
        if cfg.mode in DECODABLE_MODES and cfg.k < 2:
            raise ValueError(f"coding mode {cfg.mode} needs k >= 2, got k={cfg.k}")
        self._cfg = cfg
        self._batching = batching = batching_policy(cfg)
        self._recovery = recovery_policy(cfg)
        self._backends = backends
        self._clock = clock
        self._on_group = on_group
        queue = batching.queue
        self._queue: QueryQueue[QueryResult] = QueryQueue(queue.max_size, queue.max_size_per_client, clock)
        self._group_ended = asyncio.Event()
        self._groups: set[asyncio.Task[None]] = set()
        self._group_ids = itertools.count()
        self._loop_task: asyncio.Task[None] | None = None
        self._padding: WorkerOutput | None = None
        self.parity_delay = ParityDelay(self._recovery)

    async def learn_padding(self, image_shape: tuple[int, ...]) -> None:
        """Compute the model's output for a zero image once, so that batches holding only padding
        need not be sent: their outputs, needed to decode the others, are known."""
        worker = self._backends.place(0, self._cfg.k).data[0]
        self._padding = await self._backends.infer(worker, 0, 0, np.zeros((1, *image_shape), np.float32))

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._collect_forever(), name="batcher")

    async def stop(self) -> None:
        """Stop forming groups; in-flight groups finish, queued queries are refused (UNAVAILABLE)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        self._queue.refuse_all("frontend is shutting down")
        await asyncio.gather(*self._groups, return_exceptions=True)

    def admit(self, n: int, client: str = ANONYMOUS) -> None:
        """Raise Overloaded unless ``n`` more queries of ``client`` would be queued now."""
        self._queue.admit(n, client)

    def submit(self, images: np.ndarray, client: str = ANONYMOUS) -> list[asyncio.Future[QueryResult]]:
        """Queue every image of ``images`` (n, C, H, W); all or nothing when a bound would be exceeded."""
        return self._queue.put(client, images)

    async def infer(
        self, images: np.ndarray, timeout: float | None = None, client: str = ANONYMOUS
    ) -> list[QueryResult]:
        """Submit and wait. On timeout, or when the caller is cancelled (its client left), the queries
        are withdrawn; on timeout DeadlineExceeded is raised."""
        if len(images) == 0:
            raise InvalidInput("the request holds no images")
        futures = self.submit(images, client)
        try:
            _, pending = await asyncio.wait(futures, timeout=timeout)
            if pending:
                raise DeadlineExceeded(f"no answer within the client's deadline ({timeout:.3f} s)")
            errors = [f.exception() for f in futures]  # every exception retrieved, the first raised
            for error in errors:
                if error is not None:
                    raise error
            return [f.result() for f in futures]
        finally:
            for future in futures:
                future.cancel()  # no-op when answered; else the queue or the group skips it

    def _busy(self) -> bool:
        return bool(self._groups)

    async def _collect_forever(self) -> None:
        group_size = self._cfg.k * self._batching.max_batch
        max_delay_s = self._batching.max_delay_s
        while True:
            while len(self._groups) >= self._group_limit():
                self._group_ended.clear()
                await self._group_ended.wait()
            queries = await self._queue.take(group_size, max_delay_s, self._busy)
            task = asyncio.create_task(self._run_group(queries))
            self._groups.add(task)
            task.add_done_callback(self._group_done)

    def _group_limit(self) -> int:
        """Groups in flight: `max_inflight_groups` for every k + r workers of the pool (it grows and
        shrinks with the pool, so that a bigger pool is kept as busy)."""
        return self._batching.max_inflight_groups * self._backends.parallel_groups(self._cfg.k)

    def _group_done(self, task: asyncio.Task[None]) -> None:
        self._groups.discard(task)
        self._group_ended.set()

    async def _run_group(self, queries: list[Query[QueryResult]]) -> None:
        group = CodingGroup(
            self._cfg,
            self._recovery,
            self._backends,
            next(self._group_ids),
            queries,
            self._padding,
            self._clock,
            self.parity_delay.seconds,
        )
        try:
            await group.run()
        except Exception as exc:  # a bug must not leave clients hanging
            log.exception("coding group failed")
            group.fail_unanswered(Unavailable(f"coding group failed: {exc!r}"))
        finally:
            await group.close()
        if group.report.failed_batches:
            log.warning(
                "queries failed: no worker answered and decoding was impossible",
                extra={"report": group.report},
            )
        if group.report.clean_seconds is not None:
            self.parity_delay.observe(group.report.clean_seconds)
        if self._on_group is not None:
            self._on_group(group.report)
