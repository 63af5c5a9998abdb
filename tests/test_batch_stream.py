"""BatchStream (the frontend's client side of a backend's bidirectional stream) against a real worker
server: multiplexing, per-batch deadlines with in-stream cancellation, and reopening after a break."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from serving_models import batch, images, outputs, running, service_config, wait_serving

from coded_invnet.proto import coded_pb2, coded_pb2_grpc
from coded_invnet.serving.batch_stream import BatchStream
from coded_invnet.serving.errors import Unavailable
from services.worker.server import start as start_worker


@asynccontextmanager
async def worker_stream(model_dir: Path) -> AsyncIterator[tuple[coded_pb2_grpc.WorkerStub, BatchStream]]:
    """A SERVING in-process worker, its stub, and a BatchStream to it; all closed on exit."""
    async with running(start_worker, service_config("worker", model_dir, fault_api="on")) as channel:
        stub = coded_pb2_grpc.WorkerStub(channel)
        stream = BatchStream(stub.InferStream, "worker")
        try:
            yield stub, stream
        finally:
            await stream.close()


def test_many_batches_share_one_stream_and_each_gets_its_own_result(model_dir: Path) -> None:
    x = images(12)

    async def scenario() -> None:
        async with worker_stream(model_dir) as (stub, stream):
            expected = outputs(await stub.Infer(batch(0, 0, x=x), timeout=10))
            results = await asyncio.gather(
                *(
                    stream.call(batch(g, i, x=x[4 * g + i : 4 * g + i + 1]), 10.0)
                    for g in range(3)
                    for i in range(4)
                )
            )
            for result in results:
                row = 4 * result.group_id + result.index
                np.testing.assert_allclose(outputs(result)["logits"][0], expected["logits"][row], atol=1e-5)
            twice = await asyncio.gather(
                stream.call(batch(9, 0, x=x), 10.0), stream.call(batch(9, 0, x=x), 10.0)
            )
            assert [(r.group_id, r.index) for r in twice] == [(9, 0), (9, 0)]  # one key twice at once

    asyncio.run(scenario())


def test_a_late_batch_times_out_and_is_withdrawn_while_the_stream_goes_on(model_dir: Path) -> None:
    async def scenario() -> None:
        async with worker_stream(model_dir) as (stub, stream):
            slow = coded_pb2.FaultConfig(delay_kind=coded_pb2.DELAY_FIXED, delay_ms=5000)
            await stub.SetFaults(slow, timeout=5)
            with pytest.raises(Unavailable, match="no result within"):
                await stream.call(batch(1, 0, x=images(1)), 0.2)
            await stub.SetFaults(coded_pb2.FaultConfig(), timeout=5)
            result = await stream.call(batch(1, 0, x=images(1)), 10.0)  # the same key again: withdrawn
            assert "logits" in outputs(result)

    asyncio.run(scenario())


def test_a_broken_stream_fails_its_batches_and_the_next_call_reopens_it(model_dir: Path) -> None:
    async def scenario() -> None:
        cfg = service_config("worker", model_dir, fault_api="on")
        host = await start_worker(cfg)
        port = host.port
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = coded_pb2_grpc.WorkerStub(channel)
        stream = BatchStream(stub.InferStream, "worker")
        try:
            await wait_serving(channel)
            await stub.SetFaults(
                coded_pb2.FaultConfig(delay_kind=coded_pb2.DELAY_FIXED, delay_ms=5000), timeout=5
            )
            waiting = asyncio.create_task(stream.call(batch(2, 0, x=images(1)), 30.0))
            await asyncio.sleep(0.3)
            await host.server.stop(None)  # the worker goes away mid-batch
            with pytest.raises(Unavailable):
                await waiting
            host = await start_worker(replace(cfg, port=port))
            await wait_serving(channel)
            result = await stream.call(batch(3, 0, x=images(1)), 10.0)
            assert "logits" in outputs(result)
        finally:
            await stream.close()
            await channel.close()
            await host.stop()

    asyncio.run(scenario())
