"""Open Inference Protocol compatibility: an unmodified tritonclient.grpc client talks to our frontend,
in the same process as our own stubs (their `inference` messages live in a descriptor pool of their own)."""

from __future__ import annotations

import queue
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as triton
from helpers import MODEL_NAME, random_images, reference_logits

from coded_invnet.proto import inference_pb2, inference_pb2_grpc
from coded_invnet.tools.launcher import System


def triton_inputs(images: np.ndarray) -> list[triton.InferInput]:
    inputs = [triton.InferInput("x", list(images.shape), "FP32")]
    inputs[0].set_data_from_numpy(images)
    return inputs


def test_tritonclient_calls_our_frontend(coded_system: System, model_dir: Path) -> None:
    images = random_images(3)
    client = triton.InferenceServerClient(coded_system.frontend.target)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL_NAME)
    metadata = client.get_model_metadata(MODEL_NAME, as_json=True)
    assert metadata["name"] == MODEL_NAME
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "1", "28", "28"]}]
    assert {o["name"] for o in metadata["outputs"]} == {"logits", "probabilities", "class", "reconstructed"}
    outputs = [triton.InferRequestedOutput("logits"), triton.InferRequestedOutput("reconstructed")]
    result = client.infer(MODEL_NAME, triton_inputs(images), outputs=outputs, request_id="unary")
    expected = reference_logits(model_dir, images)
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-4, atol=1e-4)
    assert result.as_numpy("reconstructed").tolist() == [False] * 3
    parameters = result.get_response(as_json=True)["parameters"]
    assert parameters["coding_mode"] == {"string_param": "coded-invnet"}
    assert parameters["reconstructed"] == {"bool_param": False}

    answers: queue.Queue[tuple[triton.InferResult | None, Exception | None]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i in range(3):
            client.async_stream_infer(MODEL_NAME, triton_inputs(images), request_id=f"s{i}")
        streamed = [answers.get(timeout=30) for _ in range(3)]
    finally:
        client.stop_stream()
        client.close()
    assert [error for _, error in streamed] == [None] * 3
    by_id = {r.get_response().id: r.as_numpy("logits") for r, _ in streamed if r is not None}
    assert sorted(by_id) == ["s0", "s1", "s2"]
    for logits in by_id.values():
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def our_infer(target: str, images: np.ndarray) -> np.ndarray:
    """The logits of ``images`` through our own stubs (a hand-built Open Inference Protocol request)."""
    request = inference_pb2.ModelInferRequest(model_name=MODEL_NAME, id="ours")
    request.inputs.add(name="x", datatype="FP32", shape=list(images.shape))
    request.raw_input_contents.append(images.astype("<f4").tobytes())
    request.outputs.add(name="logits")
    with grpc.insecure_channel(target) as channel:
        response = inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert [o.name for o in response.outputs] == ["logits"]
    (logits,) = response.outputs
    assert logits.datatype == "FP32"
    return np.frombuffer(response.raw_output_contents[0], "<f4").reshape(tuple(logits.shape))


def test_same_request_through_our_stubs_and_tritonclient_in_one_process(
    coded_system: System, model_dir: Path
) -> None:
    images = random_images(4, seed=7)
    ours = our_infer(coded_system.frontend.target, images)
    with triton.InferenceServerClient(coded_system.frontend.target) as client:
        theirs = client.infer(
            MODEL_NAME, triton_inputs(images), outputs=[triton.InferRequestedOutput("logits")]
        ).as_numpy("logits")
    expected = reference_logits(model_dir, images)
    assert ours.shape == theirs.shape == expected.shape == (4, 10)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)  # the same request, the same answer
    assert ours.argmax(1).tolist() == expected.argmax(1).tolist()
