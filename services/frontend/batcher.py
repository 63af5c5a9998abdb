"""The frontend's batcher: queries → coding groups → workers, with straggler/failure recovery.

Pure asyncio, no gRPC: the backends (data workers, encoder, parity worker, decoder) come in through the
``Backends`` protocol, so this logic runs the same against gRPC services and against in-process models.

A coding group holds k data batches of b ≤ B queries each. Queries are dealt round-robin (query q goes to
batch q mod k, row q div k), so a partial group has batches of equal size b = ceil(n / k); the empty slots
are padded with zero images. Padding rows are computed like real ones because decoding row i of one batch
needs row i of every other batch; a batch of padding only is not sent at all, as the output of a zero
image is learnt once (`learn_padding`). Parity row i encodes row i of each of the k batches.

Per group (coded modes): the k data batches and the parity path (encoder, then parity worker) run
concurrently. Each query is answered as soon as its own batch is in, or as soon as the parity and the
other k-1 batches are in (any k of the k+1 results decode the last one; `decode_wait_ms` can give the
last one a little longer); the straggling call is then cancelled. A batch that failed is decoded the
same way, at once. Whenever decoding is impossible (parity path down, decoder down, two
batches missing) a failed batch is re-sent to another worker, and a batch late on its own is hedged there
once, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from coded_invnet.serving.config import DECODABLE_MODES, ServingConfig
from coded_invnet.serving.errors import DeadlineExceeded, InvalidInput, Overloaded, Unavailable


@dataclass(frozen=True)
class WorkerOutput:
    logits: np.ndarray  # (b, classes)
    z: np.ndarray | None  # (b, D); None when the model has no latent output


class Backends(Protocol):
    """The calls the batcher makes; each raises on failure and is cancellable."""

    async def infer(self, worker: int, group_id: int, index: int, images: np.ndarray) -> WorkerOutput: ...

    async def encode(self, group_id: int, batches: np.ndarray) -> np.ndarray:
        """(b, k, C, H, W) data batches → (b, C, H, W) parity images."""
        ...

    async def infer_parity(self, group_id: int, parity_images: np.ndarray) -> np.ndarray:
        """Parity images → what decoding needs: z_p (coded-invnet) or parity logits (parm)."""
        ...

    async def decode(
        self, group_id: int, missing: int, parity: np.ndarray, available: np.ndarray
    ) -> np.ndarray:
        """Parity output (b, D) and the other members (k-1, b, D) → logits (b, classes) of ``missing``."""
        ...


@dataclass(frozen=True)
class QueryResult:
    logits: np.ndarray  # (classes,)
    reconstructed: bool
    queue_s: float = 0.0  # from submission until its group was dispatched


@dataclass
class _Query:
    image: np.ndarray
    enqueued: float
    future: asyncio.Future[QueryResult]


@dataclass
class _BatchState:
    """One of the k data batches of a group."""

    queries: list[_Query]
    answered: bool = False
    output: np.ndarray | None = None  # what decoding uses: z (coded-invnet) or logits (parm)
    workers_tried: int = 0
    hedged: bool = False  # re-sent once because it straggled
    tasks: dict[asyncio.Task[object], str] = field(default_factory=dict)  # task → "infer" | "decode"

    @property
    def inferring(self) -> bool:
        return "infer" in self.tasks.values()


class Batcher:
    """Forms coding groups from submitted queries and answers each query's future."""

    def __init__(
        self, cfg: ServingConfig, backends: Backends, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if cfg.mode in DECODABLE_MODES and cfg.k < 2:
            raise ValueError(f"coding mode {cfg.mode} needs k >= 2, got k={cfg.k}")
        self._cfg = cfg
        self._backends = backends
        self._clock = clock
        self._queue: deque[_Query] = deque()
        self._arrived = asyncio.Event()
        self._inflight = asyncio.Semaphore(cfg.max_inflight_groups)
        self._groups: set[asyncio.Task[None]] = set()
        self._group_ids = itertools.count()
        self._loop_task: asyncio.Task[None] | None = None
        self._padding: WorkerOutput | None = None
        self.parity_delay = ParityDelay(cfg)
        self.on_group: Callable[[GroupReport], None] | None = None  # metrics hook

    async def learn_padding(self, image_shape: tuple[int, ...]) -> None:
        """Compute the model's output for a zero image once, so that batches holding only padding
        need not be sent: their outputs, needed to decode the others, are known."""
        self._padding = await self._backends.infer(0, 0, 0, np.zeros((1, *image_shape), np.float32))

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._collect_forever(), name="batcher")

    async def stop(self) -> None:
        """Stop forming groups; in-flight groups finish, queued queries are refused (UNAVAILABLE)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        while self._queue:
            query = self._queue.popleft()
            if not query.future.done():
                query.future.set_exception(Unavailable("frontend is shutting down"))
        await asyncio.gather(*self._groups, return_exceptions=True)

    def submit(self, images: np.ndarray) -> list[asyncio.Future[QueryResult]]:
        """Queue every image of ``images`` (n, C, H, W); all or nothing when the queue is full."""
        if len(images) > self._cfg.max_queue:
            raise Overloaded(
                f"the request holds {len(images)} queries; the queue takes at most {self._cfg.max_queue}: "
                "split it"
            )
        if len(self._queue) + len(images) > self._cfg.max_queue:
            raise Overloaded(
                f"frontend queue is full ({len(self._queue)} of {self._cfg.max_queue} queries waiting); "
                "retry later"
            )
        loop = asyncio.get_running_loop()
        now = self._clock()
        futures: list[asyncio.Future[QueryResult]] = []
        for image in images:
            future: asyncio.Future[QueryResult] = loop.create_future()
            self._queue.append(_Query(image, now, future))
            futures.append(future)
        self._arrived.set()
        return futures

    async def infer(self, images: np.ndarray, timeout: float | None = None) -> list[QueryResult]:
        """Submit and wait; on timeout the queries are withdrawn (cancelled) and DeadlineExceeded raised."""
        if len(images) == 0:
            raise InvalidInput("the request holds no images")
        futures = self.submit(images)
        try:
            return list(await asyncio.wait_for(asyncio.gather(*futures), timeout))
        except TimeoutError:
            raise DeadlineExceeded(f"no answer within the client's deadline ({timeout:.3f} s)") from None
        finally:
            for future in futures:
                future.cancel()  # no-op when answered; else the batcher skips it

    async def _collect_forever(self) -> None:
        group_size = self._cfg.k * self._cfg.max_batch
        while True:
            await self._inflight.acquire()
            queries = await self._next_group(group_size)
            task = asyncio.create_task(self._run_group(queries))
            self._groups.add(task)
            task.add_done_callback(self._group_done)

    def _group_done(self, task: asyncio.Task[None]) -> None:
        self._groups.discard(task)
        self._inflight.release()

    async def _next_group(self, group_size: int) -> list[_Query]:
        """Wait for a first live query, then until the group is full or that query's max delay is up."""
        while True:
            self._drop_withdrawn()
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            close_at = self._queue[0].enqueued + self._cfg.max_delay_ms / 1000
            while len(self._queue) < group_size and (left := close_at - self._clock()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except TimeoutError:
                    break
            taken: list[_Query] = []
            while self._queue and len(taken) < group_size:
                query = self._queue.popleft()
                if not query.future.done():
                    taken.append(query)
            if taken:
                return taken

    def _drop_withdrawn(self) -> None:
        while self._queue and self._queue[0].future.done():
            self._queue.popleft()

    async def _run_group(self, queries: list[_Query]) -> None:
        group_id = next(self._group_ids)
        group = _Group(
            self._cfg,
            self._backends,
            group_id,
            queries,
            self._padding,
            self._clock,
            self.parity_delay.seconds,
        )
        try:
            await group.run()
        except Exception as exc:  # a bug must not leave clients hanging
            group.fail_unanswered(Unavailable(f"coding group failed: {exc!r}"))
        finally:
            group.cancel_all()
        report = group.report()
        if report.clean_seconds is not None:
            self.parity_delay.observe(report.clean_seconds)
        if self.on_group is not None:
            self.on_group(report)


class ParityDelay:
    """How long after dispatch a group's parity path starts, unless a batch fails first.

    `parity_delay_ms`, or with `parity_delay_quantile` q > 0 the later of that and the q-quantile of how
    long recent groups answered entirely by their data workers took. This is the hedged request of
    "The Tail at Scale" (hedge at about the p90), with the parity as the hedge: a group answered by then
    needs no parity work at all, and a late one gets it while its straggler is still out. On cores the
    parity path shares with the data path, this keeps coding from slowing the healthy groups down. Until
    enough groups were seen, `parity_delay_ms` alone applies (0: at once).
    """

    WINDOW = 256  # recent groups the quantile is taken over
    REFRESH = 16  # groups between two estimates
    MIN_GROUPS = 32

    def __init__(self, cfg: ServingConfig) -> None:
        self.floor_s = cfg.parity_delay_ms / 1000
        self.quantile = cfg.parity_delay_quantile
        self.seconds = self.floor_s
        self._recent: deque[float] = deque(maxlen=self.WINDOW)
        self._unseen = 0

    def observe(self, clean_seconds: float) -> None:
        if self.quantile <= 0:
            return
        self._recent.append(clean_seconds)
        self._unseen += 1
        if self._unseen >= self.REFRESH and len(self._recent) >= self.MIN_GROUPS:
            self._unseen = 0
            self.seconds = max(self.floor_s, float(np.quantile(self._recent, self.quantile)))


@dataclass
class GroupReport:
    """What happened in one coding group (for metrics)."""

    queries: int
    batch_size: int
    reconstructed_batches: int
    resent_batches: int
    failed_batches: int
    decode_seconds: float
    parity_started: bool = False  # the parity path ran (or was running) for this group
    clean_seconds: float | None = None  # dispatch → all answered, for groups answered by data workers only


class _Group:
    """One coding group's life: dispatch, collect, recover."""

    def __init__(
        self,
        cfg: ServingConfig,
        backends: Backends,
        group_id: int,
        queries: Sequence[_Query],
        padding: WorkerOutput | None,
        clock: Callable[[], float],
        parity_delay_s: float = 0.0,
    ) -> None:
        self._cfg, self._backends, self._id, self._clock = cfg, backends, group_id, clock
        self._parity_delay_s = parity_delay_s
        self._dispatched = clock()
        self._k = k = cfg.k
        self._images = np.zeros((k, math.ceil(len(queries) / k), *queries[0].image.shape), dtype=np.float32)
        self._batches = [_BatchState([]) for _ in range(k)]
        for q, query in enumerate(queries):
            self._images[q % k, q // k] = query.image
            self._batches[q % k].queries.append(query)
        self._n_queries = len(queries)
        rows = self._images.shape[1]
        padding_output = None if padding is None else self._decodable_output(padding)
        for batch in self._batches[len(queries) :]:  # padding only: nothing to send
            batch.answered = True
            if padding_output is not None:
                batch.output = np.repeat(padding_output, rows, axis=0)
        self._padding_known = padding_output is not None
        self._parity: np.ndarray | None = None
        self._parity_usable = cfg.mode in DECODABLE_MODES  # False once parity/decoder fails
        self._decoding: int | None = None  # at most one member per group can be decoded
        self._pending: dict[asyncio.Task[object], int] = {}  # task → batch index, -1 for parity
        self._decode_started = 0.0
        self._decodable_since: float | None = None  # when k of the k+1 results were first in
        self._parity_needed = asyncio.Event()
        self._report = GroupReport(len(queries), self._images.shape[1], 0, 0, 0, 0.0)

    def report(self) -> GroupReport:
        return self._report

    async def run(self) -> None:
        for j in range(self._k):
            if self._batches[j].answered and (self._padding_known or not self._parity_usable):
                continue
            self._infer(j)
            if self._cfg.mode == "replication":
                self._infer(j)  # the copy goes to the next worker
        if self._parity_usable:
            self._spawn(-1, self._parity_path())
        straggler_at = self._clock() + self._cfg.straggler_timeout_ms / 1000
        stragglers_due = False
        while self._pending and not all(b.answered for b in self._batches):
            due = None if stragglers_due else straggler_at
            wake_at = [t for t in (due, self._decode_due_at()) if t is not None]
            timeout = max(0.0, min(wake_at) - self._clock()) if wake_at else None
            done, _ = await asyncio.wait(self._pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not stragglers_due and self._clock() >= straggler_at:
                stragglers_due = True
                self._parity_needed.set()
            for task in done:
                self._settle(task)
            self._recover(stragglers_due)
        self.fail_unanswered(Unavailable("no worker answered this batch and it could not be decoded"))

    def _spawn(self, j: int, coro: Coroutine[object, object, object], kind: str = "infer") -> None:
        task = asyncio.create_task(coro)
        self._pending[task] = j
        if j >= 0:
            self._batches[j].tasks[task] = kind

    def _infer(self, j: int) -> None:
        batch = self._batches[j]
        # rotate by group: under light load most groups hold one query (batch 0), which would
        # otherwise always land on worker 0 and leave the others idle
        worker = (j + self._id + batch.workers_tried) % self._k
        batch.workers_tried += 1
        self._spawn(j, self._backends.infer(worker, self._id, j, self._images[j]))

    async def _parity_path(self) -> np.ndarray:
        if self._parity_delay_s > 0:  # a group whose data batches are all in by then needs no parity
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._parity_needed.wait(), self._parity_delay_s)
        self._report.parity_started = True
        parity_images = await self._backends.encode(
            self._id, np.ascontiguousarray(self._images.swapaxes(0, 1))
        )
        return await self._backends.infer_parity(self._id, parity_images)

    def _settle(self, task: asyncio.Task[object]) -> None:
        j = self._pending.pop(task)
        if task.cancelled():
            return
        failed = task.exception() is not None
        if j < 0:
            if failed:
                self._parity_usable = False
            else:
                self._parity = task.result()  # type: ignore[assignment]
            return
        batch = self._batches[j]
        kind = batch.tasks.pop(task)
        if kind == "decode":
            self._decoding = None
            self._report.decode_seconds = self._clock() - self._decode_started
            if failed:
                self._parity_usable = False  # decoder down: go on uncoded
            elif not batch.answered:
                self._report.reconstructed_batches += 1
                self._answer(j, task.result(), reconstructed=True)  # type: ignore[arg-type]
            return
        if failed:
            self._parity_needed.set()  # a failure: start a delayed parity path now
            return
        out: WorkerOutput = task.result()  # type: ignore[assignment]
        if batch.output is None:
            batch.output = self._decodable_output(out)
        if not batch.answered:
            self._answer(j, out.logits, reconstructed=False)

    def _decodable_output(self, out: WorkerOutput) -> np.ndarray | None:
        return out.z if self._cfg.mode == "coded-invnet" else out.logits

    def _answer(self, j: int, logits: np.ndarray, reconstructed: bool) -> None:
        batch = self._batches[j]
        batch.answered = True
        for row, query in enumerate(batch.queries):
            if not query.future.done():
                queued = self._dispatched - query.enqueued
                query.future.set_result(QueryResult(logits[row], reconstructed, queued))
        for task in batch.tasks:
            task.cancel()  # the straggling original, a re-send or a decode no longer needed
        if all(b.answered for b in self._batches):
            report = self._report
            if not (report.reconstructed_batches or report.resent_batches or report.failed_batches):
                report.clean_seconds = self._clock() - self._dispatched
            self.cancel_all()  # the parity is no longer needed

    def _recover(self, stragglers_due: bool) -> None:
        """Decode every missing batch that k of the k+1 results let us decode; re-send (or hedge) a batch
        that failed or, past the straggler deadline, is still missing and cannot be decoded."""
        unanswered = sum(not b.answered for b in self._batches)
        for j, batch in enumerate(self._batches):
            if batch.answered or self._decoding == j:
                continue
            decodable = self._decodable(j)
            if decodable and self._parity is not None and self._decoding is None:
                # k of the k+1 results are in: decode now (after decode_wait_ms, if set, for a batch
                # still computing; at once for one that failed)
                if self._decodable_since is None:
                    self._decodable_since = self._clock()
                due_at = self._decode_due_at()
                if not batch.inferring or stragglers_due or (due_at is not None and self._clock() >= due_at):
                    self._decode(j)
                continue
            if (batch.inferring and not stragglers_due) or decodable:
                continue  # not late yet, or the parity (or the decode slot) is on its way
            if batch.inferring:
                # hedge a slow batch once, and only when it alone is late: several late batches mean
                # an overloaded pool, which duplicate work would only make worse
                if batch.hedged or unanswered > 1:
                    continue
                batch.hedged = True
            if batch.workers_tried < self._k:
                self._report.resent_batches += 1
                self._infer(j)

    def _decode_due_at(self) -> float | None:
        if self._decodable_since is None or self._decoding is not None:
            return None
        return self._decodable_since + self._cfg.decode_wait_ms / 1000

    def _decodable(self, j: int) -> bool:
        """Every other member's output is in and the parity path still works."""
        return self._parity_usable and all(
            b.output is not None for i, b in enumerate(self._batches) if i != j
        )

    def _decode(self, j: int) -> None:
        assert self._parity is not None
        available = np.stack([b.output for i, b in enumerate(self._batches) if i != j])  # type: ignore[misc]
        self._decoding = j
        self._decode_started = self._clock()
        self._spawn(j, self._backends.decode(self._id, j, self._parity, available), kind="decode")

    def fail_unanswered(self, error: Exception) -> None:
        for batch in self._batches:
            if not batch.answered:
                self._report.failed_batches += 1
                batch.answered = True
                for query in batch.queries:
                    if not query.future.done():
                        query.future.set_exception(error)

    def cancel_all(self) -> None:
        for task in self._pending:
            task.cancel()
