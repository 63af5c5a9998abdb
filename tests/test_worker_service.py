"""Worker service over real gRPC: round trips against onnxruntime, bad input, fault injection, cancel."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from serving_models import K, batch, images, outputs, running, service_config

from coded_invnet.proto import coded_pb2, coded_pb2_grpc
from coded_invnet.serving.batch_service import PENDING_PER_SLOT
from services.worker.server import start as start_worker


def direct(model: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"x": x}), strict=True))


def test_unary_and_stream_match_onnxruntime(model_dir: Path) -> None:
    x = images(5)
    expected = direct(model_dir / "worker.onnx", x)

    async def scenario() -> None:
        async with running(start_worker, service_config("worker", model_dir)) as channel:
            stub = coded_pb2_grpc.WorkerStub(channel)
            result = await stub.Infer(batch(7, 1, x=x), timeout=10)
            assert (result.group_id, result.index) == (7, 1)
            got = outputs(result)
            assert set(got) == {"logits", "z"}
            for name in got:
                np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-5)

            requests = [
                batch(group, index, x=x[index : index + 2]) for group in range(3) for index in range(2)
            ]
            call = stub.InferStream(iter(requests), timeout=10)
            results = {(r.group_id, r.index): outputs(r) for r in [r async for r in call]}
            assert set(results) == {(g, i) for g in range(3) for i in range(2)}
            for (_, index), got in results.items():
                np.testing.assert_allclose(got["logits"], expected["logits"][index : index + 2], atol=1e-5)

            description = await stub.Describe(coded_pb2.DescribeRequest(), timeout=5)
            assert description.model_name == "worker.onnx" and description.role == "data"
            assert [t.name for t in description.outputs] == ["logits", "z"]
            assert list(description.inputs[0].shape) == [-1, 1, 28, 28]

    asyncio.run(scenario())


def test_parity_worker_runs_parm_model(model_dir: Path) -> None:
    x = images(3)
    expected = direct(model_dir / f"parm_k{K}.onnx", x)

    async def scenario() -> None:
        cfg = service_config("worker", model_dir, mode="parm", role="parity")
        async with running(start_worker, cfg) as channel:
            got = outputs(await coded_pb2_grpc.WorkerStub(channel).Infer(batch(0, K, x=x), timeout=10))
            np.testing.assert_allclose(got["logits"], expected["logits"], atol=1e-5)

    asyncio.run(scenario())


def raw_batch(datatype: str, shape: list[int], data: bytes, name: str = "x") -> coded_pb2.Batch:
    return coded_pb2.Batch(tensors=[coded_pb2.Tensor(name=name, datatype=datatype, shape=shape, data=data)])


BAD_BATCHES = {
    "wrong shape": (batch(0, 0, x=np.zeros((2, 1, 27, 28), np.float32)), "shape [2, 1, 27, 28]"),
    "wrong dtype": (batch(0, 0, x=np.zeros((2, 1, 28, 28), np.float64)), "dtype float64"),
    "empty": (batch(0, 0, x=np.zeros((0, 1, 28, 28), np.float32)), "empty"),
    "NaN": (batch(0, 0, x=np.full((1, 1, 28, 28), np.nan, np.float32)), "NaN"),
    "garbage bytes": (raw_batch("FP32", [1, 1, 28, 28], b"\x01\x02\x03"), "3 bytes do not match"),
    "unknown datatype": (raw_batch("COMPLEX", [1], b"\x00" * 8), "unsupported datatype"),
    "unknown input": (batch(0, 0, image=np.zeros((1, 1, 28, 28), np.float32)), "takes ['x']"),
    "no tensors": (coded_pb2.Batch(), "no tensors"),
}


def test_bad_input_is_rejected_and_the_server_keeps_serving(model_dir: Path) -> None:
    async def scenario() -> None:
        cfg = service_config("worker", model_dir, max_message_bytes=1_000_000)
        async with running(start_worker, cfg) as channel:
            stub = coded_pb2_grpc.WorkerStub(channel)
            for case, (request, message) in BAD_BATCHES.items():
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Infer(request, timeout=5)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
                assert message in (caught.value.details() or ""), (case, caught.value.details())

            with pytest.raises(grpc.aio.AioRpcError) as caught:  # not a protobuf message at all
                await channel.unary_unary("/coded.v1.Worker/Infer")(b"\xff\xfe garbage", timeout=5)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Infer(batch(0, 0, x=images(400)), timeout=5)  # 1.25 MB > 1 MB limit
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

            # In a stream a bad batch gets an error result; the stream and its other batches go on.
            requests = [batch(1, 0, x=images(1)), BAD_BATCHES["NaN"][0], batch(1, 1, x=images(1))]
            requests[1].group_id, requests[1].index = 2, 0
            results = {(r.group_id, r.index): r async for r in stub.InferStream(iter(requests), timeout=10)}
            assert results[(2, 0)].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert "NaN" in results[(2, 0)].error.message
            assert not results[(1, 0)].HasField("error") and not results[(1, 1)].HasField("error")

            assert outputs(await stub.Infer(batch(0, 0, x=images(2)), timeout=5))["logits"].shape == (2, 10)

    asyncio.run(scenario())


def test_fault_injection_through_the_admin_rpc(model_dir: Path) -> None:
    async def scenario() -> None:
        async with running(start_worker, service_config("worker", model_dir, fault_api="on")) as channel:
            stub = coded_pb2_grpc.WorkerStub(channel)
            assert await stub.GetFaults(coded_pb2.GetFaultsRequest(), timeout=5) == coded_pb2.FaultConfig()

            await stub.SetFaults(coded_pb2.FaultConfig(failure_probability=1.0), timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Infer(batch(0, 0, x=images(1)), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "injected failure" in (caught.value.details() or "")

            delay = coded_pb2.FaultConfig(delay_kind=coded_pb2.DELAY_FIXED, delay_ms=300)
            assert (await stub.SetFaults(delay, timeout=5)).delay_ms == 300
            start = time.perf_counter()
            outputs(await stub.Infer(batch(0, 0, x=images(1)), timeout=5))
            assert time.perf_counter() - start >= 0.3

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.SetFaults(coded_pb2.FaultConfig(failure_probability=2), timeout=5)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "failure_probability" in (caught.value.details() or "")

            # A straggling batch in a stream is cancelled in-band and answered CANCELLED at once.
            await stub.SetFaults(
                coded_pb2.FaultConfig(delay_kind=coded_pb2.DELAY_FIXED, delay_ms=30_000), timeout=5
            )
            call = stub.InferStream(timeout=10)
            await call.write(batch(5, 1, x=images(1)))
            await asyncio.sleep(0.05)
            start = time.perf_counter()
            await call.write(coded_pb2.Batch(group_id=5, index=1, cancel=True))
            result = await call.read()
            assert (result.group_id, result.index) == (5, 1)
            assert result.error.code == grpc.StatusCode.CANCELLED.value[0]
            assert time.perf_counter() - start < 1.0
            await call.done_writing()

            await stub.SetFaults(coded_pb2.FaultConfig(), timeout=5)
            outputs(await stub.Infer(batch(0, 0, x=images(1)), timeout=5))

    asyncio.run(scenario())


def test_the_fault_api_is_refused_unless_switched_on(model_dir: Path) -> None:
    async def scenario() -> None:
        async with running(start_worker, service_config("worker", model_dir)) as channel:
            stub = coded_pb2_grpc.WorkerStub(channel)
            calls = {
                "SetFaults": stub.SetFaults(coded_pb2.FaultConfig(failure_probability=1.0), timeout=5),
                "SetFaults, invalid": stub.SetFaults(coded_pb2.FaultConfig(failure_probability=2), timeout=5),
                "GetFaults": stub.GetFaults(coded_pb2.GetFaultsRequest(), timeout=5),
            }
            for name, call in calls.items():
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call
                assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, name
                assert "CODED_FAULT_API=on" in (caught.value.details() or ""), name
            outputs(await stub.Infer(batch(0, 0, x=images(1)), timeout=5))  # no fault was set

    asyncio.run(scenario())


@pytest.mark.parametrize("fault_api", ["on", "off"])
def test_faults_from_config_at_start_apply_with_the_api_on_or_off(model_dir: Path, fault_api: str) -> None:
    async def scenario() -> None:
        cfg = service_config("worker", model_dir, fault_failure_probability=1.0, fault_api=fault_api)
        async with running(start_worker, cfg) as channel:
            stub = coded_pb2_grpc.WorkerStub(channel)
            if fault_api == "on":
                faults = await stub.GetFaults(coded_pb2.GetFaultsRequest(), timeout=5)
                assert faults.failure_probability == 1.0
            result = [r async for r in stub.InferStream(iter([batch(3, 0, x=images(1))]), timeout=5)][0]
            assert result.error.code == grpc.StatusCode.UNAVAILABLE.value[0]

    asyncio.run(scenario())


def test_stream_refuses_batches_beyond_its_pending_bound(model_dir: Path) -> None:
    async def scenario() -> None:
        cfg = service_config("worker", model_dir, max_inflight=1, fault_delay="fixed", fault_delay_ms=5000.0)
        async with running(start_worker, cfg) as channel:
            requests = [batch(group, 0, x=images(1)) for group in range(PENDING_PER_SLOT + 1)]
            call = coded_pb2_grpc.WorkerStub(channel).InferStream(iter(requests), timeout=20)
            first = await call.read()  # the one over the bound is answered at once; the rest wait
            assert isinstance(first, coded_pb2.BatchResult)
            assert (first.group_id, first.error.code) == (
                PENDING_PER_SLOT,
                grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
            )
            call.cancel()

    asyncio.run(scenario())
