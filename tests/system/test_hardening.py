"""What a hostile or heavy client, and restarts, must not do to the frontend: starve another client,
stall the system, or fill its log with errors for events that are normal in service."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers import MODEL_NAME, K, random_images

from coded_invnet.client import AsyncClient
from coded_invnet.client.core import build_request
from coded_invnet.proto import inference_pb2_grpc
from coded_invnet.tools.launcher import System, launch
from coded_invnet.tools.openloop import poisson_schedule, run_open_loop

ABANDONED_STREAMS = 300
PER_CLIENT = 256


@pytest.fixture(scope="module")
def system(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    settings = {"max_queue_per_client": PER_CLIENT, "max_queue": 4 * PER_CLIENT}
    log_dir = tmp_path_factory.mktemp("hardening-logs")
    with launch(model_dir, "coded-invnet", K, frontend_settings=settings, log_dir=log_dir) as running:
        yield running


def frontend_errors(system: System) -> list[str]:
    """The frontend's ERROR log lines (its log is one JSON object per line)."""
    lines = system.frontend.log_path.read_text(errors="replace").splitlines()
    return [line for line in lines if line.startswith("{") and json.loads(line).get("level") == "ERROR"]


async def steady_client(target: str, rate: float, seconds: float) -> Counter[str]:
    images, labels = random_images(64), np.zeros(64, np.int64)
    schedule = poisson_schedule(rate, seconds, seed=3)
    async with AsyncClient(target, MODEL_NAME, timeout_s=5) as client:
        outcomes = await run_open_loop(client.predict, images, labels, schedule, 5.0)
    return Counter(o.code for o in outcomes)


def test_a_steady_client_is_not_starved_by_one_that_abandons_hundreds_of_streams(system: System) -> None:
    """One connection opens 300 streams of 32 images each and never reads an answer; a client on its
    own connection at 50 q/s meanwhile sees no error at all. The abandoned streams' queries beyond the
    per-client bound are refused, and once the streams are cancelled their queries are withdrawn."""

    async def scenario() -> tuple[Counter[str], Counter[str]]:
        options = [("grpc.use_local_subchannel_pool", 1)]  # its own connection: its own peer
        async with grpc.aio.insecure_channel(system.frontend.target, options=options) as channel:
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            streams = []
            for s in range(ABANDONED_STREAMS):
                call = stub.ModelStreamInfer()  # type: ignore[call-arg]  # grpc-stubs lags grpc.aio
                for i in range(32):
                    await call.write(build_request(random_images(1, seed=s * 32 + i), MODEL_NAME, str(i)))
                streams.append(call)
            steady = await steady_client(system.frontend.target, rate=50, seconds=4)
            first_answers: Counter[str] = Counter()
            for call in streams[:20]:
                reply = await call.read()
                first_answers[reply.error_message.split(":")[0] if reply.error_message else "OK"] += 1  # type: ignore[attr-defined]  # grpc-stubs lags grpc.aio
            for call in streams:
                call.cancel()
        return steady, first_answers

    steady, abandoned = asyncio.run(scenario())
    assert set(steady) == {"OK"}, steady
    assert abandoned["RESOURCE_EXHAUSTED"] > 0  # the heavy client, and only it, met its bound
    after = asyncio.run(steady_client(system.frontend.target, rate=50, seconds=1))
    assert set(after) == {"OK"}, after
    assert system.frontend.alive()


def test_restarting_a_data_worker_every_second_loses_nothing_and_logs_no_error(system: System) -> None:
    """The restart loop (SIGKILL, restart half a second later) under steady load: every query is
    answered within its 5 s deadline, and the frontend logs no ERROR line for what is normal in service
    (killed backends, withdrawn stragglers, cancelled and timed-out client requests)."""

    async def scenario() -> Counter[str]:
        load = asyncio.create_task(steady_client(system.frontend.target, rate=40, seconds=12))
        worker = system.workers[1]  # one worker down at a time: every group stays decodable
        for _ in range(10):
            worker.kill()
            await asyncio.sleep(0.5)
            worker.restart()
            await asyncio.sleep(0.5)
        async with AsyncClient(system.frontend.target, MODEL_NAME) as client:
            for _ in range(5):  # requests abandoned at their deadline
                with pytest.raises(grpc.aio.AioRpcError):
                    await client.predict(random_images(1)[0], timeout_s=0.0005)
        return await load

    codes = asyncio.run(scenario())
    assert set(codes) == {"OK"}, codes
    for worker in system.workers:
        system.restart(worker.name)  # every worker SERVING again before the next test
    assert frontend_errors(system) == []


def test_oversized_and_huge_named_requests_get_short_clear_errors(system: System) -> None:
    with grpc.insecure_channel(system.frontend.target) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = build_request(random_images(1), "m" * 1_000_000)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        details = caught.value.details() or ""
        assert "unknown model" in details and len(details) < 400
        request = build_request(random_images(PER_CLIENT + 1), MODEL_NAME)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "split it" in (caught.value.details() or "")
