"""One coding group's life: dispatch, collect, recover. Pure asyncio, no gRPC.

A group holds k data batches of b ≤ B queries each. Queries are dealt round-robin (query q goes to
batch q mod k, row q div k), so a partial group has batches of equal size b = ceil(n / k); the empty slots
are padded with zero images. Padding rows are computed like real ones because decoding row i of one batch
needs row i of every other batch; a batch of padding only is not sent at all when the output of a zero
image is known (`Batcher.learn_padding`). Row i of each of the r parity batches encodes row i of each
of the k batches.

The k data batches go out at once; the parity path (one encoder call for the r parity batches, then
parity batch m to parity worker m) starts after the hedge delay (`ParityDelay`), or at once when a batch
fails. A query is answered as soon as its own batch is in, or as soon as any k of the k + r results are
in: the s ≤ r missing data batches are decoded in one decoder call from every parity in (least
squares, `coding.decoding_rows`; a parity on its way that would cut the error gain much is waited for,
`BETTER_ROWS_FACTOR`;
`decode_wait_ms` can give the last batches a little longer); the straggling calls are then cancelled.

Recovery, so that nothing is lost and no group waits for a backend's 10 s deadline:
- failed batches are decoded when enough parities let them be, and re-sent to the next worker when they
  cannot be decoded, or when the decode has not come by the straggler deadline (the parity path may be
  stuck);
- a batch that every worker failed is tried again, round after round with a growing back-off, while
  its queries are wanted (their clients have not withdrawn them) and within the backend deadline;
- a batch still computing at the straggler deadline is re-sent once (hedged) when it alone is late and
  cannot be decoded; several late batches mean a loaded pool, which duplicate work would only load more,
  so they are hedged only at `LATE_HEDGE_FACTOR` times the straggler deadline.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from coded_invnet.coding import decoding_rows, error_gain, parity_coefficients
from coded_invnet.serving.config import DECODABLE_MODES, ServingConfig
from coded_invnet.serving.errors import Unavailable
from coded_invnet.serving.policies import RecoveryPolicy
from services.frontend.calls import Backends, WorkerOutput
from services.frontend.queue import Query

LATE_HEDGE_FACTOR = 10
# With r ≥ 2 the missing batches are decoded from every parity in; a parity on its way that would cut
# the error gain by more than this factor is waited for (to the straggler deadline at most): on k = 10,
# r = 2, one member decoded from parity 1 alone can have gain 52 against 10 from both
BETTER_ROWS_FACTOR = 2.0
RESEND_BACKOFF_S = 0.05
MAX_RESEND_BACKOFF_S = 1.0
T = TypeVar("T")


@dataclass(frozen=True)
class QueryResult:
    logits: np.ndarray  # (classes,)
    reconstructed: bool
    queue_s: float = 0.0  # from submission until its group was dispatched


@dataclass
class GroupReport:
    """What happened in one coding group (for metrics and the hedge policy)."""

    queries: int
    batch_size: int
    reconstructed_batches: int = 0
    resent_batches: int = 0
    failed_batches: int = 0
    decode_seconds: float = 0.0
    parity_started: bool = False  # the parity path ran (or was running) for this group
    decoded_sets: int = 0  # decoder calls that answered (each decodes up to r batches)
    clean_seconds: float | None = None  # dispatch → all answered, for groups answered by data workers only


@dataclass
class _Batch:
    """One of the k data batches of a group."""

    queries: list[Query[QueryResult]]
    answered: bool = False
    output: np.ndarray | None = None  # what decoding uses: z (coded-invnet) or logits (parm)
    workers_tried: int = 0
    hedged: bool = False  # re-sent once because it was late
    calls: set[asyncio.Task[WorkerOutput]] = field(default_factory=set)
    retry_at: float | None = None  # every worker failed it: the next round starts then

    def withdrawn(self) -> bool:
        return all(q.future.done() for q in self.queries)


def _consume(task: asyncio.Task[Any]) -> None:
    """Mark a finished task's exception as seen: a late failure of a call nobody needs any more is
    normal in service (the group was answered without it), not an error to log."""
    if not task.cancelled():
        task.exception()


class CodingGroup:
    def __init__(
        self,
        cfg: ServingConfig,
        recovery: RecoveryPolicy,
        backends: Backends,
        group_id: int,
        queries: Sequence[Query[QueryResult]],
        padding: WorkerOutput | None,
        clock: Callable[[], float],
        parity_delay_s: float = 0.0,
    ) -> None:
        self._cfg, self._recovery = cfg, recovery
        self._backends, self._id, self._clock = backends, group_id, clock
        self._parity_delay_s = parity_delay_s
        self._dispatched = clock()
        self._k = k = cfg.k
        self._placement = backends.place(group_id, k)
        rows = math.ceil(len(queries) / k)
        self._images = np.zeros((k, rows, *queries[0].image.shape), dtype=np.float32)  # (k, b, C, H, W)
        self._batches = [_Batch([]) for _ in range(k)]
        for q, query in enumerate(queries):
            self._images[q % k, q // k] = query.image
            self._batches[q % k].queries.append(query)
        padding_output = None if padding is None else self._decodable_output(padding)
        for batch in self._batches[len(queries) :]:  # padding only: nothing to send
            batch.answered = True
            if padding_output is not None:
                batch.output = np.repeat(padding_output, rows, axis=0)
        self._padding_known = padding_output is not None
        self._coded = cfg.mode in DECODABLE_MODES
        self._r = cfg.group_parities
        self._parity_usable = self._coded  # False once the encoder, every parity path or the decoder failed
        self._parities: dict[int, np.ndarray] = {}  # parity row m → its output (z_p^(m) or parity logits)
        self._parity_failed: set[int] = set()
        self._encode_call: asyncio.Task[np.ndarray] | None = None
        self._parity_calls: dict[asyncio.Task[np.ndarray], int] = {}  # call → parity row
        # the parity path starts then, or at once on a failure or past the straggler deadline; no task
        # waits for that moment: the loop wakes for it, so a group answered before it costs nothing more
        self._parity_at = self._dispatched + parity_delay_s
        self._worker_calls: dict[asyncio.Task[WorkerOutput], int] = {}  # call → batch index
        self._decode_call: asyncio.Task[np.ndarray] | None = None
        self._decoding: list[int] = []  # the batches the running decode reconstructs
        self._decode_started = 0.0
        self._decodable_since: float | None = None  # when k of the k + r results were first in
        self._straggler_at = self._dispatched + recovery.straggler_timeout_s
        self._hedge_all_at = self._dispatched + LATE_HEDGE_FACTOR * recovery.straggler_timeout_s
        self.report = GroupReport(len(queries), rows)

    # --- the loop
    async def run(self) -> None:
        for j, batch in enumerate(self._batches):
            if batch.answered and (self._padding_known or not self._parity_usable):
                continue
            self._infer(j)
            if self._cfg.mode == "replication":
                self._infer(j)  # the copy goes to the next worker
        if self._parity_delay_s <= 0:
            self._start_parity_path()
        while not self._all_answered() and not all(b.withdrawn() for b in self._batches):
            calls, wake_at = self._calls(), self._next_wake_at()
            if not calls and wake_at is None:
                break  # nothing out, nothing due: what is unanswered cannot be answered
            timeout = None if wake_at is None else max(0.0, wake_at - self._clock())
            done: set[asyncio.Task[Any]] = set()
            if calls:
                done, _ = await asyncio.wait(calls, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(timeout or 0.0)
            if self._clock() >= min(self._parity_at, self._straggler_at):
                self._start_parity_path()
            for task in done:
                self._settle(task)
            self._recover()
        self.fail_unanswered(Unavailable("no worker answered this batch and it could not be decoded"))

    async def close(self) -> None:
        """Cancel every call still out and wait for them to end (so that withdrawals reach the backends
        before the group's slot is reused)."""
        calls = self._calls()
        for task in calls:
            task.cancel()
        await asyncio.gather(*calls, return_exceptions=True)

    def _calls(self) -> set[asyncio.Task[Any]]:
        calls: set[asyncio.Task[Any]] = set(self._worker_calls) | set(self._parity_calls)
        calls.update(t for t in (self._encode_call, self._decode_call) if t is not None and not t.done())
        return calls

    def _next_wake_at(self) -> float | None:
        """The next deadline that may change what recovery does."""
        retries = (b.retry_at for b in self._batches if b.retry_at is not None and not b.answered)
        times = [t for t in (self._straggler_at, self._hedge_all_at, *retries) if t > self._clock()]
        if self._coded and self._encode_call is None and self._parity_at > self._clock():
            times.append(self._parity_at)
        if self._decodable_since is not None and self._decode_call is None:
            times.append(self._decodable_since + self._recovery.decode_wait_s)
        return min(times) if times else None

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.create_task(coro)
        task.add_done_callback(_consume)
        return task

    # --- calls
    def _infer(self, j: int) -> None:
        batch = self._batches[j]
        # the placement rotates by group (or picks the least loaded): under light load most groups hold
        # one query (batch 0), which would otherwise always land on one worker and leave the others idle
        worker = self._placement.data_worker(j, batch.workers_tried)
        batch.workers_tried += 1
        task = self._spawn(self._backends.infer(worker, self._id, j, self._images[j]))
        self._worker_calls[task] = j
        batch.calls.add(task)

    def _start_parity_path(self) -> None:
        """Start the parity path (once; coded modes only): the encoder first, the parity workers when
        its r parity batches are in (`_settle`)."""
        if self._coded and self._encode_call is None:
            self.report.parity_started = True
            groups = np.ascontiguousarray(self._images.swapaxes(0, 1))  # (b, k, C, H, W)
            self._encode_call = self._spawn(self._backends.encode(self._id, groups))

    def _infer_parities(self, parity_images: np.ndarray) -> None:
        """parity_images (b, r, C, H, W): parity batch m to parity worker m."""
        for m in range(self._r):
            images = np.ascontiguousarray(parity_images[:, m])  # (b, C, H, W)
            worker = self._placement.parity[m % len(self._placement.parity)]
            task = self._spawn(self._backends.infer_parity(worker, self._id, m, images))
            self._parity_calls[task] = m

    def _decode_rows(self, missing: list[int], past_straggler: bool) -> list[int]:
        """The parity rows to decode ``missing`` from now: every one in, unless one on its way would cut
        the error gain by more than BETTER_ROWS_FACTOR (then [] until it comes, or until the straggler
        deadline)."""
        if self._r == 1:  # one parity: nothing to choose
            return [0] if self._parities and len(missing) == 1 else []
        # only on the recovery path, so no group pays for the code when its workers answer
        a = parity_coefficients(self._k, self._r)
        have = decoding_rows(list(self._parities), missing)
        if not have or past_straggler:
            return have
        possible = [m for m in range(self._r) if m not in self._parity_failed]
        best = decoding_rows(possible, missing)
        gain_now, gain_best = (error_gain(a, rows, missing) for rows in (have, best))
        return have if gain_now <= BETTER_ROWS_FACTOR * gain_best else []

    def _decode(self, missing: list[int], rows: list[int]) -> None:
        parities = np.stack([self._parities[m] for m in rows])  # (p, b, D)
        members = np.stack([self._member_output(i, parities[0]) for i in range(self._k)])  # (k, b, D)
        self._decoding, self._decode_started = missing, self._clock()
        self._decode_call = self._spawn(self._backends.decode(self._id, missing, rows, parities, members))

    def _member_output(self, i: int, like: np.ndarray) -> np.ndarray:
        """Member i's output, zeros for a missing one (the decoder ignores its rows)."""
        output = self._batches[i].output
        return np.zeros_like(like) if output is None else output

    def _missing(self) -> list[int]:
        """The batches whose output decoding lacks."""
        return [j for j, batch in enumerate(self._batches) if batch.output is None]

    def _possible_parities(self) -> int:
        """Parities in or on their way."""
        return self._r - len(self._parity_failed) if self._parity_usable else 0

    # --- results
    def _settle(self, task: asyncio.Task[Any]) -> None:
        failed = task.cancelled() or task.exception() is not None
        if task is self._encode_call:
            if failed:
                self._parity_usable = False
            else:
                self._infer_parities(task.result())
        elif task in self._parity_calls:
            m = self._parity_calls.pop(task)
            if failed:
                self._parity_failed.add(m)
                self._parity_usable = self._parity_usable and len(self._parity_failed) < self._r
            else:
                self._parities[m] = task.result()
        elif task is self._decode_call:
            self._decode_call = None
            self.report.decode_seconds = self._clock() - self._decode_started
            if task.cancelled():
                return  # its batches were answered by their workers meanwhile
            if failed:
                self._parity_usable = False  # decoder down: go on uncoded
                return
            self.report.decoded_sets += 1
            logits = task.result()  # (s, b, classes)
            for j, decoded in zip(self._decoding, logits, strict=True):
                if not self._batches[j].answered:
                    self.report.reconstructed_batches += 1
                    self._answer(j, decoded, reconstructed=True)
        else:
            j = self._worker_calls.pop(task)
            batch = self._batches[j]
            batch.calls.discard(task)
            if failed:
                self._start_parity_path()  # a failure: start a delayed parity path now
                return
            out: WorkerOutput = task.result()
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
        for task in batch.calls:
            task.cancel()  # the straggling original or a re-send no longer needed
        if self._decode_call is not None and all(self._batches[i].answered for i in self._decoding):
            self._decode_call.cancel()
        if self._all_answered():
            report = self.report
            if not (report.reconstructed_batches or report.resent_batches or report.failed_batches):
                report.clean_seconds = self._clock() - self._dispatched
            for task in self._calls():
                task.cancel()  # the parity is no longer needed

    def _all_answered(self) -> bool:
        return all(b.answered for b in self._batches)

    # --- recovery
    def _recover(self) -> None:
        """Decode what k of the k + r results let us decode; re-send what cannot be (see the module doc)."""
        now = self._clock()
        past_straggler = now >= self._straggler_at
        unanswered = sum(not b.answered for b in self._batches)
        missing = self._missing()
        # the parities that decode the missing batches are in, or on their way
        decodable = self._parity_usable and 0 < len(missing) <= self._possible_parities()
        waiting = [j for j in missing if not self._batches[j].answered]
        rows = self._decode_rows(missing, past_straggler) if decodable else []
        if waiting and rows and self._decode_call is None:
            if self._decodable_since is None:
                self._decodable_since = now
            decode_due = now >= self._decodable_since + self._recovery.decode_wait_s
            if past_straggler or decode_due or any(not self._batches[j].calls for j in waiting):
                self._decode(missing, rows)
        for j, batch in enumerate(self._batches):
            if batch.answered or (self._decode_call is not None and j in self._decoding):
                continue
            if decodable and j in missing and len(missing) <= len(self._parities):
                continue  # decoded once the decode is due
            if not batch.calls:  # failed
                if decodable and not past_straggler:
                    continue  # its decode is on its way
            elif batch.hedged or not past_straggler:
                continue
            elif (decodable or unanswered > 1) and now < self._hedge_all_at:
                continue  # the parity that decodes it is on its way, or the pool is just loaded
            else:
                batch.hedged = True
                if batch.workers_tried >= self._k:
                    continue  # every worker has it already
            if not batch.calls and not self._may_resend(batch, now):
                continue
            self.report.resent_batches += 1
            self._infer(j)

    def _may_resend(self, batch: _Batch, now: float) -> bool:
        """A failed batch goes to the next worker at once; once every worker failed it, the next round
        starts after a back-off (doubling from RESEND_BACKOFF_S: workers restarting, a pod rescheduled),
        for as long as its queries are wanted and the backend deadline allows."""
        if now >= self._dispatched + self._recovery.backend_timeout_s:
            return False
        rounds = batch.workers_tried // self._k
        if batch.workers_tried % self._k or rounds == 0:
            return True
        if batch.retry_at is None:
            batch.retry_at = now + min(RESEND_BACKOFF_S * 2 ** (rounds - 1), MAX_RESEND_BACKOFF_S)
        if now < batch.retry_at:
            return False
        batch.retry_at = None
        return True

    def fail_unanswered(self, error: Exception) -> None:
        """Fail the queries still waiting (a batch whose clients all left is not a failure)."""
        for batch in self._batches:
            if batch.answered:
                continue
            batch.answered = True
            waiting = [query for query in batch.queries if not query.future.done()]
            self.report.failed_batches += bool(waiting)
            for query in waiting:
                query.future.set_exception(error)
