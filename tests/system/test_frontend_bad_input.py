"""Bad requests at the frontend get the right status and a message naming the defect; the service (and a
client streaming alongside) carries on unaffected."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from helpers import MODEL_NAME, SYSTEM_MAX_MESSAGE_BYTES, SYSTEM_MAX_QUEUE, random_images

from coded_invnet.client import Client, StreamResult
from coded_invnet.proto import inference_pb2, inference_pb2_grpc
from coded_invnet.tools.launcher import System

StatusCode = grpc.StatusCode


def request(
    images: np.ndarray | None = None,
    *,
    model: str = MODEL_NAME,
    datatype: str = "FP32",
    shape: list[int] | None = None,
    raw: bytes | None = None,
    name: str = "x",
) -> inference_pb2.ModelInferRequest:
    images = random_images(2) if images is None else images
    message = inference_pb2.ModelInferRequest(model_name=model, id="bad")
    message.inputs.add(name=name, datatype=datatype, shape=list(images.shape) if shape is None else shape)
    message.raw_input_contents.append(images.tobytes() if raw is None else raw)
    return message


def nan_images() -> np.ndarray:
    images = random_images(2)
    images[1, 0, 3, 3] = np.nan
    return images


CASES = {
    "wrong shape": (request(random_images(2)[:, 0]), StatusCode.INVALID_ARGUMENT, "shape"),
    "wrong image size": (request(np.zeros((2, 1, 27, 27), np.float32)), StatusCode.INVALID_ARGUMENT, "shape"),
    "wrong dtype": (
        request(random_images(2).astype(np.float64), datatype="FP64"),
        StatusCode.INVALID_ARGUMENT,
        "FP32",
    ),
    "bytes do not fit dtype": (
        request(datatype="FP32", raw=b"\x00" * 7),
        StatusCode.INVALID_ARGUMENT,
        "bytes",
    ),
    "empty": (request(np.zeros((0, 1, 28, 28), np.float32)), StatusCode.INVALID_ARGUMENT, "empty"),
    "NaN": (request(nan_images()), StatusCode.INVALID_ARGUMENT, "NaN"),
    "unknown model": (request(model="cifar"), StatusCode.NOT_FOUND, "unknown model"),
    "unknown input": (request(name="image"), StatusCode.INVALID_ARGUMENT, "input"),
    "no input": (
        inference_pb2.ModelInferRequest(model_name=MODEL_NAME),
        StatusCode.INVALID_ARGUMENT,
        "one input",
    ),
    "more than the queue holds": (
        request(random_images(SYSTEM_MAX_QUEUE + 1)),
        StatusCode.RESOURCE_EXHAUSTED,
        "split it",
    ),
    "oversized message": (
        request(random_images(SYSTEM_MAX_MESSAGE_BYTES // (28 * 28 * 4) + 1)),
        StatusCode.RESOURCE_EXHAUSTED,
        "",
    ),
}


@pytest.fixture(scope="module")
def background_stream(coded_system: System) -> Iterator[list[StreamResult]]:
    """A well-behaved client streaming throughout the bad-input tests; must be answered in full."""
    results: list[StreamResult] = []

    def run() -> None:
        with Client(coded_system.frontend.target, timeout_s=30) as client:
            results.extend(client.stream((image for image in random_images(400)), window=8))

    thread = threading.Thread(target=run)
    thread.start()
    yield results
    thread.join(60)
    assert not thread.is_alive()
    assert len(results) == 400 and all(r.error is None for r in results)


@pytest.fixture(scope="module")
def stub(coded_system: System) -> Iterator[inference_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(coded_system.frontend.target) as channel:
        yield inference_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.mark.parametrize("case", CASES)
def test_bad_request_gets_status_and_message(
    case: str,
    stub: inference_pb2_grpc.GRPCInferenceServiceStub,
    background_stream: list[StreamResult],
    coded_system: System,
) -> None:
    message, code, words = CASES[case]
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(message, timeout=10)
    assert caught.value.code() == code, caught.value.details()
    assert words in (caught.value.details() or "")
    # still serving, answering well-formed requests
    assert len(stub.ModelInfer(request(), timeout=10).outputs) == 4
    assert coded_system.frontend.alive()


def test_garbage_bytes(stub: inference_pb2_grpc.GRPCInferenceServiceStub, coded_system: System) -> None:
    with grpc.insecure_channel(coded_system.frontend.target) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # type: ignore[call-arg]  # grpc-stubs lags grpc.aio
        with pytest.raises(grpc.RpcError) as caught:
            call(b"\xff\xfe garbage, not a protobuf \x00\x01", timeout=10)
    assert caught.value.code() == StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert "not a valid protobuf" in (caught.value.details() or "")
    assert stub.ServerLive(inference_pb2.ServerLiveRequest(), timeout=5).live


def test_bad_request_on_a_stream_answers_an_error_and_keeps_the_stream(
    stub: inference_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    good, bad = request(), request(nan_images())
    good.id, bad.id = "good", "bad"
    replies = {r.infer_response.id: r for r in stub.ModelStreamInfer(iter([bad, good]), timeout=10)}
    assert (
        replies["bad"].error_message.startswith("INVALID_ARGUMENT") and "NaN" in replies["bad"].error_message
    )
    assert not replies["good"].error_message and len(replies["good"].infer_response.outputs) == 4


def test_client_deadline_is_honoured(coded_system: System) -> None:
    with Client(coded_system.frontend.target) as client:
        with pytest.raises(grpc.RpcError) as caught:
            client.predict(random_images(1)[0], timeout_s=0.0005)
    assert caught.value.code() == StatusCode.DEADLINE_EXCEEDED
