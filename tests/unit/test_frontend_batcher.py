"""The batcher's grouping and recovery logic, in process, against a linear model.

With a linear g and a mean encoder the Coded-InvNet identity is exact (g(mean x) = mean g(x)), so a
reconstructed answer must equal the true one to float precision; that pins the decode wiring exactly.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from helpers import LINEAR_IMAGE, LinearBackends, rng, run_queries, true_logits

from coded_invnet.serving.config import ServingConfig
from coded_invnet.serving.errors import DeadlineExceeded, Overloaded
from coded_invnet.serving.policies import batching_policy, recovery_policy
from services.frontend.batcher import Batcher


@pytest.mark.parametrize("mode", ["none", "replication", "parm", "coded-invnet"])
@pytest.mark.parametrize("n", [1, 5, 16, 37])
def test_every_query_answered_with_its_own_prediction(mode: str, n: int) -> None:
    images, results, reports = asyncio.run(run_queries(LinearBackends(mode), n, k=4, max_batch=4))
    np.testing.assert_allclose(
        np.stack([r.logits for r in results]), true_logits(images), rtol=1e-5, atol=1e-5
    )
    assert not any(r.reconstructed for r in results)
    assert sum(r.queries for r in reports) == n
    assert all(r.batch_size <= 4 for r in reports)


@pytest.mark.parametrize("mode", ["parm", "coded-invnet"])
def test_dead_worker_is_decoded(mode: str) -> None:
    backends = LinearBackends(mode, dead={1})
    images, results, reports = asyncio.run(run_queries(backends, 12, k=4, max_batch=4))
    np.testing.assert_allclose(
        np.stack([r.logits for r in results]), true_logits(images), rtol=1e-3, atol=1e-3
    )
    flagged = [q for q, r in enumerate(results) if r.reconstructed]
    assert flagged == [q for q in range(12) if q % 4 == 1]  # exactly the rows dealt to worker 1
    assert sum(r.reconstructed_batches for r in reports) == 1


def test_straggler_is_decoded_at_its_deadline_and_cancelled() -> None:
    backends = LinearBackends("coded-invnet", delays={2: 10.0})

    async def timed() -> tuple[float, list]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        _, results, _ = await run_queries(backends, 8, k=4, max_batch=2, straggler_timeout_ms=50)
        return loop.time() - start, results

    elapsed, results = asyncio.run(timed())
    assert elapsed < 1.0
    assert [r.reconstructed for r in results] == [q % 4 == 2 for q in range(8)]
    assert backends.cancelled == [2]


@pytest.mark.parametrize("decode_wait_ms", [0.0, 300.0])
def test_straggler_is_decoded_once_k_of_k_plus_1_are_in_not_at_its_deadline(decode_wait_ms: float) -> None:
    """Any k of the k+1 results decode the last one (after decode_wait_ms): no wait for the (here 5 s)
    straggler deadline."""
    backends = LinearBackends("coded-invnet", delays={1: 10.0})

    async def timed() -> tuple[float, np.ndarray, list]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        images, results, _ = await run_queries(
            backends, 8, k=4, max_batch=2, straggler_timeout_ms=5000, decode_wait_ms=decode_wait_ms
        )
        return loop.time() - start, images, results

    elapsed, images, results = asyncio.run(timed())
    assert decode_wait_ms / 1000 <= elapsed < decode_wait_ms / 1000 + 1.0
    np.testing.assert_allclose(
        np.stack([r.logits for r in results]), true_logits(images), rtol=1e-3, atol=1e-3
    )
    assert [r.reconstructed for r in results] == [q % 4 == 1 for q in range(8)]
    assert backends.cancelled == [1]


@pytest.mark.parametrize("fault", ["parity_down", "decoder_down"])
def test_parity_path_down_goes_on_uncoded(fault: str) -> None:
    backends = LinearBackends("coded-invnet", dead={3})
    setattr(backends, fault, True)
    images, results, reports = asyncio.run(run_queries(backends, 8, k=4, max_batch=2))
    np.testing.assert_allclose(
        np.stack([r.logits for r in results]), true_logits(images), rtol=1e-5, atol=1e-5
    )
    assert not any(r.reconstructed for r in results)
    assert ("infer", 0) in backends.calls[4:]  # batch 3 re-sent to worker (3 + 1) mod 4
    assert sum(r.resent_batches for r in reports) == 1


def test_none_mode_resends_a_failed_batch() -> None:
    backends = LinearBackends("none", dead={0})
    images, results, _ = asyncio.run(run_queries(backends, 4, k=2, max_batch=2))
    np.testing.assert_allclose(
        np.stack([r.logits for r in results]), true_logits(images), rtol=1e-5, atol=1e-5
    )


def test_replication_first_answer_wins() -> None:
    backends = LinearBackends("replication", delays={0: 10.0})
    images, results, _ = asyncio.run(run_queries(backends, 4, k=2, max_batch=2, straggler_timeout_ms=5000))
    np.testing.assert_allclose(
        np.stack([r.logits for r in results]), true_logits(images), rtol=1e-5, atol=1e-5
    )


def test_all_workers_dead_fails_loudly() -> None:
    backends = LinearBackends("coded-invnet", dead={0, 1})
    with pytest.raises(Exception, match="no worker answered"):
        asyncio.run(run_queries(backends, 4, k=2, max_batch=2, rpc_timeout_s=0.5))
    rounds = sum(1 for call in backends.calls if call[0] == "infer") / 2  # 2 batches, 2 workers each round
    assert 3 <= rounds <= 12  # tried again with back-off, not given up after one round nor spun on


def test_queue_bound_refuses_instead_of_dropping() -> None:
    async def scenario() -> None:
        batcher = Batcher(ServingConfig(max_queue=3), LinearBackends("coded-invnet"))
        batcher.submit(np.zeros((3, *LINEAR_IMAGE), np.float32))
        with pytest.raises(Overloaded, match="queue is full"):
            batcher.submit(np.zeros((1, *LINEAR_IMAGE), np.float32))
        await batcher.stop()

    asyncio.run(scenario())


def test_deadline_withdraws_the_queries() -> None:
    async def scenario() -> None:
        backends = LinearBackends("none", delays={0: 0.5, 1: 0.5})
        batcher = Batcher(ServingConfig(mode="none"), backends)
        batcher.start()
        with pytest.raises(DeadlineExceeded):
            await batcher.infer(np.zeros((2, *LINEAR_IMAGE), np.float32), timeout=0.1)
        await batcher.stop()

    asyncio.run(scenario())


def test_a_partial_group_leaves_at_once_when_idle_and_waits_at_most_max_delay_when_busy() -> None:
    """Light load pays no batching wait; with a group in flight, a partial group waits for company for
    up to max_delay_ms (measured by the queries' own queue time)."""

    async def scenario() -> tuple[float, float]:
        backends = LinearBackends("none", delays={j: 0.3 for j in range(4)})
        batcher = Batcher(ServingConfig(mode="none", k=4, max_batch=8, max_delay_ms=50), backends)
        batcher.start()
        try:
            first = asyncio.create_task(batcher.infer(np.zeros((1, *LINEAR_IMAGE), np.float32), timeout=5))
            await asyncio.sleep(0.01)  # the first group is now in flight, for 0.3 s
            (second,) = await batcher.infer(np.zeros((1, *LINEAR_IMAGE), np.float32), timeout=5)
            (idle,) = await first
        finally:
            await batcher.stop()
        return idle.queue_s, second.queue_s

    idle_wait, busy_wait = asyncio.run(scenario())
    assert idle_wait < 0.01
    assert 0.04 < busy_wait < 0.25


@pytest.mark.parametrize("mode", ["none", "coded-invnet"])
def test_batches_of_padding_only_are_not_sent(mode: str) -> None:
    """A lone query in a k=4 group: one data batch (plus the parity path), yet still decodable."""

    async def scenario() -> list:
        backends = LinearBackends(mode)
        batcher = Batcher(ServingConfig(mode=mode, k=4, max_batch=2), backends)
        await batcher.learn_padding(LINEAR_IMAGE)
        backends.calls.clear()
        backends.dead = {0} if mode == "coded-invnet" else set()  # decoded from padding outputs
        batcher.start()
        image = rng.random((1, *LINEAR_IMAGE), dtype=np.float32)
        results = await batcher.infer(image, timeout=5)
        await batcher.stop()
        np.testing.assert_allclose(results[0].logits, true_logits(image)[0], rtol=1e-3, atol=1e-3)
        assert results[0].reconstructed == (mode == "coded-invnet")
        return backends.calls

    calls = asyncio.run(scenario())
    assert [c for c in calls if c[0] == "infer"] == [("infer", 0)]


def test_several_late_batches_are_waited_for_not_duplicated() -> None:
    """Two slow workers look like overload, not a straggler: no hedged copies that would add load (until
    LATE_HEDGE_FACTOR times the straggler deadline)."""
    backends = LinearBackends("coded-invnet", delays={1: 0.1, 2: 0.1})
    scenario = run_queries(backends, 8, k=4, max_batch=2, straggler_timeout_ms=20)
    images, results, reports = asyncio.run(scenario)
    np.testing.assert_allclose(
        np.stack([r.logits for r in results]), true_logits(images), rtol=1e-5, atol=1e-5
    )
    assert sum(r.resent_batches for r in reports) == 0
    assert [c for c in backends.calls if c[0] == "infer"] == [("infer", j) for j in range(4)]


def test_frontend_settings_are_read_as_queue_batching_and_recovery_policies() -> None:
    cfg = ServingConfig(
        service="frontend", max_batch=16, max_delay_ms=5, max_queue=100, max_queue_per_client=10,
        straggler_timeout_ms=40, decode_wait_ms=3, parity_delay_ms=2, rpc_timeout_s=7,
    )  # fmt: skip
    batching, recovery = batching_policy(cfg), recovery_policy(cfg)
    assert (batching.max_batch, batching.max_delay_s, batching.max_inflight_groups) == (16, 0.005, 3)
    assert (batching.queue.max_size, batching.queue.max_size_per_client) == (100, 10)
    assert batching.queue.max_request_bytes == cfg.request_bytes_budget == 16 * cfg.message_limit
    assert (recovery.straggler_timeout_s, recovery.decode_wait_s, recovery.parity_delay_s) == (
        0.04,
        0.003,
        0.002,
    )
    assert recovery.backend_timeout_s == 7
