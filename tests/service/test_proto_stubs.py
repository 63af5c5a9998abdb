"""The committed stubs match protos/, import package-qualified, keep KServe/Triton wire numbers, and live
in one process beside tritonclient's own `inference` messages."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool
from tritonclient.grpc import service_pb2 as triton_pb2

from coded_invnet.proto import coded_pb2, coded_pb2_grpc, generate, inference_pb2, inference_pb2_grpc


def test_committed_stubs_match_protos() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "coded_invnet.proto.generate", "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_drift_check_catches_a_stub_in_the_default_pool(tmp_path: Path) -> None:
    """The check compares the post-edited stubs: one left registering in the default pool is stale."""
    for stub in generate.generated_files(generate.PACKAGE_DIR):
        shutil.copy(generate.PACKAGE_DIR / stub, tmp_path / stub)
    module = tmp_path / "inference_pb2.py"
    text = module.read_text()
    assert generate.PRIVATE_POOL_CALL in text
    assert generate.check(tmp_path) == 0
    module.write_text(text.replace(generate.PRIVATE_POOL_CALL, generate.DEFAULT_POOL_CALL))
    assert generate.check(tmp_path) == 1


class _Recorder(grpc.GenericRpcHandler):
    """Records the full method path of each call it is asked to route (and routes none)."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        self.paths.append(handler_call_details.method)
        return None


def test_stubs_call_the_kserve_method_paths() -> None:
    """Stub calls reach a real server under the service paths tritonclient uses (`/inference.…`)."""
    recorder = _Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers([recorder])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()

    def unimplemented(call: Callable[..., object], request: object) -> None:
        with pytest.raises(grpc.RpcError) as raised:
            call(request, timeout=5)
        error = raised.value
        assert isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.UNIMPLEMENTED

    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            inference = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            unimplemented(inference.ModelInfer, inference_pb2.ModelInferRequest())
            unimplemented(inference.ServerLive, inference_pb2.ServerLiveRequest())
            unimplemented(coded_pb2_grpc.WorkerStub(channel).Infer, coded_pb2.Batch())
            unimplemented(coded_pb2_grpc.EncoderStub(channel).Encode, coded_pb2.Batch())
            unimplemented(coded_pb2_grpc.DecoderStub(channel).Decode, coded_pb2.Batch())
    finally:
        server.stop(None)
    assert recorder.paths == [
        "/inference.GRPCInferenceService/ModelInfer",
        "/inference.GRPCInferenceService/ServerLive",
        "/coded.v1.Worker/Infer",
        "/coded.v1.Encoder/Encode",
        "/coded.v1.Decoder/Decode",
    ]


def test_messages_round_trip() -> None:
    batch = coded_pb2.Batch(group_id=3, index=1)
    batch.tensors.add(name="x", datatype="FP32", shape=[1, 2], data=b"\x00" * 8)
    assert coded_pb2.Batch.FromString(batch.SerializeToString()) == batch
    request = inference_pb2.ModelInferRequest(model_name="m", id="7", raw_input_contents=[b"\x01"])
    request.parameters["reconstructed"].bool_param = True
    assert inference_pb2.ModelInferRequest.FromString(request.SerializeToString()) == request
    assert inference_pb2.ModelInferRequest.DESCRIPTOR.full_name == "inference.ModelInferRequest"
    assert inference_pb2.DESCRIPTOR.package == "inference"


def test_inference_wire_numbers_match_kserve_v2() -> None:
    fields = {
        (message, field.name): field.number
        for message in (
            "ModelInferRequest",
            "ModelInferResponse",
            "ModelStreamInferResponse",
            "InferParameter",
        )
        for field in inference_pb2.DESCRIPTOR.message_types_by_name[message].fields
    }
    assert fields[("ModelInferRequest", "raw_input_contents")] == 7
    assert fields[("ModelInferRequest", "parameters")] == 4
    assert fields[("ModelInferResponse", "raw_output_contents")] == 6
    assert fields[("ModelStreamInferResponse", "error_message")] == 1
    assert fields[("ModelStreamInferResponse", "infer_response")] == 2
    assert fields[("InferParameter", "uint64_param")] == 5
    service = inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    stream = service.methods_by_name["ModelStreamInfer"]
    assert stream.client_streaming and stream.server_streaming


def test_wire_compatible_with_tritonclient_messages() -> None:
    """Both sets of `inference.*` messages are loaded in this process (ours in a pool of their own), and
    each parses the other's bytes."""
    assert inference_pb2.DESCRIPTOR.pool is not descriptor_pool.Default()
    assert triton_pb2.DESCRIPTOR.pool is descriptor_pool.Default()
    request = inference_pb2.ModelInferRequest(model_name="m", id="7", raw_input_contents=[b"\x00\x01"])
    request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    request.parameters["reconstructed"].bool_param = True
    theirs = triton_pb2.ModelInferRequest.FromString(request.SerializeToString())
    assert theirs.model_name == "m" and theirs.id == "7" and list(theirs.inputs[0].shape) == [1, 2]
    assert theirs.raw_input_contents[0] == b"\x00\x01" and theirs.parameters["reconstructed"].bool_param
    response = triton_pb2.ModelStreamInferResponse(error_message="INVALID_ARGUMENT: x")
    response.infer_response.id = "s1"
    ours = inference_pb2.ModelStreamInferResponse.FromString(response.SerializeToString())
    assert (ours.error_message, ours.infer_response.id) == ("INVALID_ARGUMENT: x", "s1")
