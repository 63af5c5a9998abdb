"""The frontend's query queue: bounded in total and per client, withdrawal-aware, batch-forming.

It knows nothing of coding: `put` admits a request's queries (all or nothing), `take` hands out up to
`max_items` live ones once a batch is worth forming. Every query carries the future its request awaits;
a query whose future is done (answered elsewhere, or cancelled because its client left or its deadline
passed) is withdrawn: it stops counting against the bounds at once and is skipped when taken.
"""

from __future__ import annotations

import asyncio
import functools
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from coded_invnet.serving.errors import Overloaded, Unavailable

Result = TypeVar("Result")


@dataclass(eq=False)
class Query(Generic[Result]):
    image: np.ndarray  # (C, H, W)
    client: str
    enqueued: float
    future: asyncio.Future[Result]
    queued: bool = field(default=True)


class QueryQueue(Generic[Result]):
    """FIFO of queries with a total bound (`max_size`) and a bound per client (`max_per_client`)."""

    def __init__(self, max_size: int, max_per_client: int, clock: Callable[[], float]) -> None:
        self.max_size = max_size
        self.max_per_client = max_per_client
        self._clock = clock
        self._items: deque[Query[Result]] = deque()
        self._live = 0
        self._by_client: Counter[str] = Counter()
        self._arrived = asyncio.Event()

    def __len__(self) -> int:
        """Live (not withdrawn) queries waiting."""
        return self._live

    def admit(self, n: int, client: str) -> None:
        """Raise Overloaded unless ``n`` more queries of ``client`` fit within the bounds now."""
        if n > min(self.max_size, self.max_per_client):
            raise Overloaded(
                f"the request holds {n} queries; a client may queue at most "
                f"{min(self.max_size, self.max_per_client)}: split it"
            )
        if self._by_client[client] + n > self.max_per_client:
            raise Overloaded(
                f"this client already has {self._by_client[client]} queries waiting (at most "
                f"{self.max_per_client} per client); wait for answers first"
            )
        if self._live + n > self.max_size:
            raise Overloaded(
                f"frontend queue is full ({self._live} of {self.max_size} queries waiting); retry later"
            )

    def put(self, client: str, images: np.ndarray) -> list[asyncio.Future[Result]]:
        """Queue every image of ``images`` (n, C, H, W) for ``client``; raise Overloaded (nothing queued)
        when the request would exceed the total or the client's bound."""
        n = len(images)
        self.admit(n, client)
        loop = asyncio.get_running_loop()
        now = self._clock()
        futures: list[asyncio.Future[Result]] = []
        for image in images:
            query: Query[Result] = Query(image, client, now, loop.create_future())
            query.future.add_done_callback(functools.partial(self._withdrawn, query))
            self._items.append(query)
            futures.append(query.future)
        self._live += n
        self._by_client[client] += n
        self._arrived.set()
        return futures

    def _withdrawn(self, query: Query[Result], _: asyncio.Future[Result]) -> None:
        self._release(query)

    def _release(self, query: Query[Result]) -> None:
        """The query left the queue, or was withdrawn while in it: it no longer counts."""
        if not query.queued:
            return
        query.queued = False
        self._live -= 1
        self._by_client[query.client] -= 1
        if self._by_client[query.client] <= 0:
            del self._by_client[query.client]

    async def take(self, max_items: int, max_delay_s: float, busy: Callable[[], bool]) -> list[Query[Result]]:
        """Wait for a first live query, then return up to ``max_items``. While ``busy()`` (other batches
        are in flight) wait up to ``max_delay_s`` after the oldest query arrived for the batch to fill;
        when idle, leave at once: light load pays no batching wait."""
        while True:
            self._drop_withdrawn()
            if not self._items:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            close_at = self._items[0].enqueued + max_delay_s
            while busy() and self._live < max_items and (left := close_at - self._clock()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except TimeoutError:
                    break
            taken: list[Query[Result]] = []
            while self._items and len(taken) < max_items:
                query = self._items.popleft()
                live = query.queued and not query.future.done()
                self._release(query)
                if live:
                    taken.append(query)
            if taken:
                return taken

    def _drop_withdrawn(self) -> None:
        while self._items and (not self._items[0].queued or self._items[0].future.done()):
            self._release(self._items.popleft())

    def refuse_all(self, message: str) -> None:
        """Fail every waiting query with Unavailable (shutdown)."""
        while self._items:
            query = self._items.popleft()
            if not query.future.done():
                query.future.set_exception(Unavailable(message))
