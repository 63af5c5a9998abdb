"""Finding the workers: a static list, the A records of one DNS name (a headless Service), a targets
file; a pool that gains and loses members while it serves."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import service_config

from coded_invnet.serving.config import ServingConfig
from coded_invnet.serving.errors import ConfigError, Unavailable
from coded_invnet.tools.launcher import free_port
from services.frontend.backends import GrpcBackends, check_targets
from services.frontend.discovery import resolve_workers
from services.frontend.pool import Placement


def test_static_list_is_taken_in_order() -> None:
    workers = ("worker-0.worker:8001", "worker-1.worker:8001", "worker-2.worker:8001")
    assert resolve_workers(workers, 2) == list(workers[:2])


def test_dns_name_resolves_to_its_addresses() -> None:
    assert resolve_workers(("dns:///localhost:8001",), 1)[0] in ("127.0.0.1:8001", "[::1]:8001")


def test_too_few_workers_is_unavailable() -> None:
    with pytest.raises(Unavailable, match="k=3"):
        resolve_workers(("a:1", "b:2"), 3)
    with pytest.raises(Unavailable, match="cannot resolve"):
        resolve_workers(("dns:///no-such-host.invalid:8001",), 1)


def test_coded_modes_need_the_parity_path() -> None:
    with pytest.raises(ConfigError, match="CODED_PARITY_WORKER"):
        check_targets(ServingConfig(service="frontend", mode="coded-invnet", workers=("a:1", "b:2")))
    check_targets(ServingConfig(service="frontend", mode="none", workers=("a:1", "b:2")))
    with pytest.raises(ConfigError, match="CODED_WORKERS"):
        check_targets(ServingConfig(service="frontend", mode="none"))


def test_a_pool_follows_its_dns_name(model_dir: Path) -> None:
    """A DNS-named pool is resolved again: a dead address it first held (a pod gone) is avoided, and
    when worker A shows up in its place (a restarted pod, a new address), the pool holds A and B."""
    from coded_invnet.client import AsyncClient
    from services.frontend.server import start as start_frontend
    from services.worker.server import start as start_worker

    async def scenario() -> None:
        workers = [await start_worker(service_config("worker", model_dir, mode="none")) for _ in range(2)]
        port_a, port_b = (w.port for w in workers)
        dead = f"127.0.0.1:{free_port()}"
        answers = iter([[dead, f"127.0.0.1:{port_b}"]])
        moved = sorted([f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}"])

        def resolve(targets: Sequence[str]) -> list[str]:
            assert targets == ("dns:///workers.test:8001",)
            return next(answers, moved)

        cfg = service_config(
            "frontend", model_dir, mode="none", k=2, workers=("dns:///workers.test:8001",),
            discovery_interval_s=0.2, rpc_timeout_s=2.0,
        )  # fmt: skip
        frontend = await start_frontend(cfg, resolve)
        client = AsyncClient(f"127.0.0.1:{frontend.port}", timeout_s=20)
        try:
            async with asyncio.timeout(30):
                while not await client.ready() or frontend.backends.workers != moved:
                    await asyncio.sleep(0.1)
            prediction = await client.predict(np.zeros((1, 28, 28), np.float32))
            assert not prediction.reconstructed
        finally:
            await client.close()
            await frontend.host.stop()
            for worker in workers:
                await worker.stop()

    asyncio.run(scenario())


def test_fixed_slots_follow_their_addresses_and_a_pool_takes_any_size() -> None:
    """With a parity worker the first k addresses are the slots, in order; without one every address is
    a pool member and each group gets k + r distinct ones."""

    async def scenario() -> None:
        fixed_cfg = ServingConfig(
            service="frontend",
            k=2,
            workers=("dns:///w:1",),
            parity_worker="p:1",
            encoder="e:1",
            decoder="d:1",
        )
        fixed = GrpcBackends(fixed_cfg)
        await fixed.update("worker", ["a:1", "b:1", "c:1"])
        assert fixed.workers == ["a:1", "b:1"] and fixed.parallel_groups(2) == 1
        assert fixed.place(1, 2) == Placement(("b:1", "a:1"), ("p:1",))
        await fixed.update("worker", ["a:1", "x:1"])  # b's pod came back elsewhere
        assert fixed.place(0, 2).data == ("a:1", "x:1")
        with pytest.raises(Unavailable, match="k=2"):
            await fixed.update("worker", ["a:1"])
        pool = GrpcBackends(replace(fixed_cfg, parity_worker=""))
        await pool.update("worker", [f"w{i}:1" for i in range(7)])
        placement = pool.place(3, 2)
        assert len({*placement.data, *placement.parity}) == 3 and pool.parallel_groups(2) == 2
        assert not pool.pool_short and not fixed.pool_short
        await pool.update("worker", ["w0:1", "w1:1"])  # fewer than k + r = 3: groups share a worker
        assert pool.pool_short
        await asyncio.gather(fixed.close(), pool.close())

    asyncio.run(scenario())
