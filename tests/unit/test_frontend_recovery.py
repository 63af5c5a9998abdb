"""The batcher's hedge and recovery under stragglers, hung calls and failed workers, in process against
the linear model of tests/helpers.py (a reconstructed answer equals the true one)."""

from __future__ import annotations

import asyncio

import numpy as np
from helpers import LINEAR_IMAGE, LinearBackends, rng, run_queries, timed_queries, true_logits

from coded_invnet.serving.config import ServingConfig
from coded_invnet.serving.policies import recovery_policy
from services.frontend.batcher import Batcher
from services.frontend.group import LATE_HEDGE_FACTOR, GroupReport
from services.frontend.hedge import ParityDelay


def test_delayed_parity_path_is_skipped_without_faults_and_started_by_a_failure() -> None:
    quiet = LinearBackends("coded-invnet")
    asyncio.run(run_queries(quiet, 8, k=4, max_batch=2, parity_delay_ms=1000))
    assert ("encode", -1) not in quiet.calls

    async def timed() -> tuple[float, list]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        _, results, _ = await run_queries(broken, 8, k=4, max_batch=2, parity_delay_ms=1000)
        return loop.time() - started, results

    broken = LinearBackends("coded-invnet", dead={2})
    elapsed, results = asyncio.run(timed())
    assert elapsed < 0.5  # the failure started the parity path, not the 1 s delay
    assert [r.reconstructed for r in results] == [q % 4 == 2 for q in range(8)]


def test_parity_delay_follows_the_quantile_of_recent_clean_groups() -> None:
    cfg = ServingConfig(service="frontend", parity_delay_ms=2.0, parity_delay_quantile=0.9)
    delay = ParityDelay(recovery_policy(cfg))
    assert delay.seconds == 0.002  # too few groups seen yet: the floor
    for i in range(ParityDelay.MIN_GROUPS):
        delay.observe(0.010 + 0.001 * (i % 10))  # 10..19 ms
    assert 0.017 <= delay.seconds <= 0.019
    for _ in range(ParityDelay.WINDOW):
        delay.observe(0.001)  # faster than the floor
    assert delay.seconds == 0.002
    off = ParityDelay(recovery_policy(ServingConfig(service="frontend", parity_delay_quantile=0.0)))
    for _ in range(100):
        off.observe(0.5)
    assert off.seconds == 0.0


def test_adaptive_parity_path_skips_healthy_groups_and_still_rescues_a_straggler() -> None:
    """Healthy groups, once seen, teach the delay; later groups answered before it run no parity
    path, while a group with a straggler gets its parity then and is decoded long before the deadline."""
    backends = LinearBackends("coded-invnet", delays={j: 0.002 for j in range(4)})
    config = ServingConfig(
        service="frontend", mode="coded-invnet", k=4, max_batch=1, max_delay_ms=0,
        parity_delay_quantile=0.9, straggler_timeout_ms=5000,
    )  # fmt: skip

    async def scenario() -> tuple[list[GroupReport], float, list]:
        reports: list[GroupReport] = []
        batcher = Batcher(config, backends, on_group=reports.append)
        batcher.start()
        loop = asyncio.get_running_loop()
        try:
            for _ in range(60):  # one group at a time: its latency is the workers' 2 ms
                await batcher.infer(rng.random((4, *LINEAR_IMAGE), dtype=np.float32), timeout=5)
            backends.delays[1] = 10.0
            started = loop.time()
            images = rng.random((4, *LINEAR_IMAGE), dtype=np.float32)
            results = await batcher.infer(images, timeout=5)
            elapsed = loop.time() - started
        finally:
            await batcher.stop()
        np.testing.assert_allclose(
            np.stack([r.logits for r in results]), true_logits(images), rtol=1e-3, atol=1e-3
        )
        return reports, elapsed, results

    reports, elapsed, results = asyncio.run(scenario())
    assert all(r.parity_started for r in reports[:20])  # nothing learnt yet: eager
    assert sum(r.parity_started for r in reports[40:60]) <= 10
    assert reports[-1].parity_started and reports[-1].reconstructed_batches == 1
    assert [r.reconstructed for r in results] == [False, True, False, False]
    assert elapsed < 1.0


def test_two_hung_batches_are_hedged_at_the_late_deadline_not_left_to_the_backend_deadline() -> None:
    """Two calls that never answer (a stream to a dead peer that has not failed yet) cannot be decoded;
    they are re-sent at LATE_HEDGE_FACTOR times the straggler deadline, so the group is answered in well
    under a second instead of at the backends' 10 s deadline."""
    backends = LinearBackends("coded-invnet", delays={1: 30.0, 2: 30.0})

    elapsed, images, results, reports = timed_queries(backends, straggler_timeout_ms=20)
    assert LATE_HEDGE_FACTOR * 0.020 <= elapsed < 1.0
    np.testing.assert_allclose(
        np.stack([r.logits for r in results]), true_logits(images), rtol=1e-3, atol=1e-3
    )
    assert sum(r.resent_batches for r in reports) == 2
    assert set(backends.cancelled) == {1, 2}  # every call to the hung workers was withdrawn


def test_a_failed_batch_is_resent_when_the_parity_path_hangs() -> None:
    """A failure waits for its decode only until the straggler deadline: a parity path that hangs must
    not hold the group."""
    backends = LinearBackends("coded-invnet", dead={1})

    async def hanging_encode(group_id: int, batches: np.ndarray) -> np.ndarray:
        await asyncio.sleep(30)
        return batches.mean(axis=1)

    backends.encode = hanging_encode  # type: ignore[method-assign]

    elapsed, images, results, reports = timed_queries(backends, straggler_timeout_ms=20)
    assert elapsed < 1.0
    np.testing.assert_allclose(
        np.stack([r.logits for r in results]), true_logits(images), rtol=1e-5, atol=1e-5
    )
    assert not any(r.reconstructed for r in results)
    assert sum(r.resent_batches for r in reports) == 1


def test_a_batch_every_worker_failed_is_tried_again_once_a_worker_is_back() -> None:
    """Both workers down for a moment (restarting): the queries wait and are answered, not lost."""
    backends = LinearBackends("none", dead={0, 1})

    async def revive() -> None:
        await asyncio.sleep(0.3)
        backends.dead.clear()

    async def scenario() -> tuple[np.ndarray, list, list[GroupReport]]:
        reviving = asyncio.create_task(revive())
        found = await run_queries(backends, 4, k=2, max_batch=2, rpc_timeout_s=5)
        await reviving
        return found

    images, results, reports = asyncio.run(scenario())
    np.testing.assert_allclose(
        np.stack([r.logits for r in results]), true_logits(images), rtol=1e-5, atol=1e-5
    )
    assert sum(r.failed_batches for r in reports) == 0
