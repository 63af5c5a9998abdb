"""inference.GRPCInferenceService (Open Inference Protocol + Triton's ModelStreamInfer): proto ↔ domain.

Domain errors become status codes in the shared interceptor; on the stream they become the response's
`error_message`. Every answer carries `coding_mode`, `reconstructed` (any row reconstructed) and
`reconstructed_count` in its parameters, and per row the BOOL output `reconstructed`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import numpy as np

from coded_invnet.proto import inference_pb2, inference_pb2_grpc
from coded_invnet.serving.errors import InvalidInput
from coded_invnet.serving.grpc_errors import status_of
from coded_invnet.serving.streams import StreamResponder
from coded_invnet.serving.tensors import encode_array
from services.frontend.inference import MODEL_VERSION, InferenceService, InferRequest, InputTensor

SERVER_NAME = "coded-invnet"
SERVER_VERSION = "0.1.0"
MAX_PENDING_PER_STREAM = 1024  # requests of one stream in flight; more are answered RESOURCE_EXHAUSTED
Parameter = inference_pb2.InferParameter
TensorMetadata = inference_pb2.ModelMetadataResponse.TensorMetadata


class InferenceServicer(inference_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: InferenceService, mode: str) -> None:
        self._service = service
        self._mode = mode

    async def ServerLive(self, request: object, context: object) -> inference_pb2.ServerLiveResponse:
        return inference_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: object, context: object) -> inference_pb2.ServerReadyResponse:
        return inference_pb2.ServerReadyResponse(ready=self._service.ready())

    async def ModelReady(
        self, request: inference_pb2.ModelReadyRequest, context: object
    ) -> inference_pb2.ModelReadyResponse:
        return inference_pb2.ModelReadyResponse(ready=self._service.ready(request.name))

    async def ServerMetadata(self, request: object, context: object) -> inference_pb2.ServerMetadataResponse:
        return inference_pb2.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=[])

    async def ModelMetadata(
        self, request: inference_pb2.ModelMetadataRequest, context: object
    ) -> inference_pb2.ModelMetadataResponse:
        spec = self._service.ready_spec(request.name, request.version)
        classes = spec.num_classes
        return inference_pb2.ModelMetadataResponse(
            name=self._service.model_name,
            versions=[MODEL_VERSION],
            platform=f"coded-invnet/{self._mode}",
            inputs=[TensorMetadata(name=spec.input_name, datatype="FP32", shape=[-1, *spec.image_shape])],
            outputs=[
                TensorMetadata(name="logits", datatype="FP32", shape=[-1, classes]),
                TensorMetadata(name="probabilities", datatype="FP32", shape=[-1, classes]),
                TensorMetadata(name="class", datatype="INT64", shape=[-1]),
                TensorMetadata(name="reconstructed", datatype="BOOL", shape=[-1]),
            ],
        )

    async def ModelInfer(
        self, request: inference_pb2.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.ModelInferResponse:
        return await self._infer(request, context)

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[inference_pb2.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[inference_pb2.ModelStreamInferResponse]:
        """Requests run concurrently; responses go out in completion order (match them by `id`)."""

        async def answer(request: inference_pb2.ModelInferRequest) -> inference_pb2.ModelStreamInferResponse:
            return inference_pb2.ModelStreamInferResponse(infer_response=await self._infer(request, context))

        responder = StreamResponder(answer, _stream_error, MAX_PENDING_PER_STREAM)
        async for response in responder.respond(request_iterator):
            yield response

    async def _infer(
        self, request: inference_pb2.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.ModelInferResponse:
        answer = await self._service.infer(
            InferRequest(
                request.model_name,
                request.model_version,
                _inputs(request),
                [o.name for o in request.outputs],
                context.peer(),
                context.time_remaining(),
            )
        )
        response = inference_pb2.ModelInferResponse(
            model_name=self._service.model_name, model_version=MODEL_VERSION, id=request.id
        )
        response.parameters["coding_mode"].CopyFrom(Parameter(string_param=self._mode))
        response.parameters["reconstructed"].CopyFrom(Parameter(bool_param=answer.reconstructed > 0))
        response.parameters["reconstructed_count"].CopyFrom(Parameter(int64_param=answer.reconstructed))
        for name, array in answer.outputs.items():
            datatype, shape, data = encode_array(array)
            response.outputs.add(name=name, datatype=datatype, shape=shape)
            response.raw_output_contents.append(data)
        return response


def _inputs(request: inference_pb2.ModelInferRequest) -> list[InputTensor]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    return [
        InputTensor(
            t.name,
            t.datatype,
            tuple(t.shape),
            raw[i] if raw else np.asarray(t.contents.fp32_contents, dtype="<f4").tobytes(),
        )
        for i, t in enumerate(request.inputs)
    ]


def _stream_error(
    request: inference_pb2.ModelInferRequest, error: BaseException
) -> inference_pb2.ModelStreamInferResponse:
    code, message = status_of(error)
    return inference_pb2.ModelStreamInferResponse(
        error_message=f"{code.name}: {message}",
        infer_response=inference_pb2.ModelInferResponse(model_name=request.model_name[:128], id=request.id),
    )
