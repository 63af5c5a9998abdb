"""The committed stubs match protos/, import package-qualified, and keep KServe/Triton wire numbers."""

from __future__ import annotations

import subprocess
import sys

from coded_invnet.proto import coded_pb2_grpc, inference_pb2, inference_pb2_grpc


def test_committed_stubs_match_protos() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "coded_invnet.proto.generate", "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_stubs_import_as_package_modules() -> None:
    assert inference_pb2_grpc.GRPCInferenceServiceStub
    assert coded_pb2_grpc.WorkerStub and coded_pb2_grpc.EncoderStub and coded_pb2_grpc.DecoderStub
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
    """tritonclient's own messages parse ours byte for byte (checked in a subprocess: both define
    `inference.*` in protobuf's default pool, so they cannot be imported into one process)."""
    request = inference_pb2.ModelInferRequest(model_name="m", id="7", raw_input_contents=[b"\x00\x01"])
    request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    request.parameters["reconstructed"].bool_param = True
    script = (
        "import sys; from tritonclient.grpc import service_pb2 as s; "
        "r = s.ModelInferRequest.FromString(sys.stdin.buffer.read()); "
        "assert r.model_name == 'm' and r.id == '7' and list(r.inputs[0].shape) == [1, 2]; "
        "assert r.raw_input_contents[0] == b'\\x00\\x01' and r.parameters['reconstructed'].bool_param; "
        "print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], input=request.SerializeToString(), capture_output=True
    )
    assert result.returncode == 0 and result.stdout.strip() == b"ok", result.stderr.decode()
