"""The frontend's query queue: bounds in total and per client, withdrawal, round-robin hand-out."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from coded_invnet.serving.errors import Overloaded
from services.frontend.queue import QueryQueue


def images(n: int) -> np.ndarray:
    return np.zeros((n, 1, 2, 2), np.float32)


def never_busy() -> bool:
    return False


def test_bounds_in_total_and_per_client_refuse_whole_requests() -> None:
    async def scenario() -> None:
        queue: QueryQueue[int] = QueryQueue(max_size=10, max_per_client=6, clock=time.monotonic)
        queue.put("a", images(6))
        with pytest.raises(Overloaded, match="this client already has 6 queries waiting"):
            queue.put("a", images(1))
        with pytest.raises(Overloaded, match="queue is full"):
            queue.put("b", images(5))
        with pytest.raises(Overloaded, match="split it"):
            queue.put("c", images(7))
        queue.put("b", images(4))
        assert len(queue) == 10

    asyncio.run(scenario())


def test_withdrawn_queries_stop_counting_at_once_and_are_never_handed_out() -> None:
    async def scenario() -> None:
        queue: QueryQueue[int] = QueryQueue(max_size=4, max_per_client=4, clock=time.monotonic)
        gone = queue.put("a", images(4))
        for future in gone[:3]:
            future.cancel()  # the client left, or its deadline passed
        await asyncio.sleep(0)  # done callbacks run
        assert len(queue) == 1
        kept = queue.put("a", images(3))  # room again for the same client
        taken = await queue.take(10, 0.0, never_busy)
        assert [q.future for q in taken] == [gone[3], *kept]

    asyncio.run(scenario())


def test_a_light_client_is_served_in_the_next_batch_not_after_a_heavy_ones_backlog() -> None:
    async def scenario() -> None:
        queue: QueryQueue[int] = QueryQueue(max_size=1000, max_per_client=500, clock=time.monotonic)
        heavy = queue.put("heavy", images(300))
        light = queue.put("light", images(2))
        first = await queue.take(8, 0.0, never_busy)
        futures = [q.future for q in first]
        assert light[0] in futures and light[1] in futures
        assert futures[:2] == heavy[:1] + light[:1]  # one each, round-robin, each client in order
        assert [q.future for q in await queue.take(8, 0.0, never_busy)] == heavy[6:14]

    asyncio.run(scenario())


def test_a_batch_waits_for_company_only_while_busy() -> None:
    async def scenario() -> tuple[float, float]:
        queue: QueryQueue[int] = QueryQueue(max_size=100, max_per_client=100, clock=time.monotonic)
        queue.put("a", images(1))
        started = time.monotonic()
        await queue.take(8, 0.1, never_busy)
        idle = time.monotonic() - started
        queue.put("a", images(1))
        started = time.monotonic()
        await queue.take(8, 0.1, lambda: True)
        return idle, time.monotonic() - started

    idle, busy = asyncio.run(scenario())
    assert idle < 0.05 and busy >= 0.09
