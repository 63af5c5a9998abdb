"""inference.GRPCInferenceService (Open Inference Protocol + Triton's ModelStreamInfer): proto ↔ domain.

Request checks raise domain errors (the shared interceptor maps them to status codes; on the stream
they become the response's `error_message`). Every answer carries `coding_mode`, `reconstructed` (any
row reconstructed) and `reconstructed_count` in its parameters, and per row the BOOL output
`reconstructed`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
import numpy as np

from coded_invnet.proto import inference_pb2, inference_pb2_grpc
from coded_invnet.serving.errors import InvalidInput, NotFound, ServingError, Unavailable
from coded_invnet.serving.grpc_errors import status_of
from coded_invnet.serving.metrics import RequestTiming, ServingMetrics
from coded_invnet.serving.tensors import decode_array, encode_array
from services.frontend.backends import ModelSpec
from services.frontend.batcher import Batcher, QueryResult

SERVER_NAME = "coded-invnet"
SERVER_VERSION = "0.1.0"
MODEL_VERSION = "1"
OUTPUTS = ("logits", "probabilities", "class", "reconstructed")
Tensor = inference_pb2.ModelInferRequest.InferInputTensor
Parameter = inference_pb2.InferParameter


@dataclass(frozen=True)
class Answer:
    """The domain result of one request: one row per query."""

    results: list[QueryResult]
    mode: str

    def outputs(self) -> dict[str, np.ndarray]:
        logits = np.stack([r.logits for r in self.results]).astype(np.float32)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return {
            "logits": logits,
            "probabilities": shifted / shifted.sum(axis=1, keepdims=True),
            "class": logits.argmax(axis=1).astype(np.int64),
            "reconstructed": np.array([r.reconstructed for r in self.results], dtype=np.bool_),
        }


class InferenceServicer(inference_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        batcher: Batcher,
        model_name: str,
        mode: str,
        metrics: ServingMetrics,
        spec: Callable[[], ModelSpec | None],
        max_bytes: int,
    ) -> None:
        self._batcher = batcher
        self._model_name = model_name
        self._mode = mode
        self._metrics = metrics
        self._spec = spec  # None until the data workers have described their model
        self._max_bytes = max_bytes

    # --- metadata and readiness
    async def ServerLive(self, request: object, context: object) -> inference_pb2.ServerLiveResponse:
        return inference_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: object, context: object) -> inference_pb2.ServerReadyResponse:
        return inference_pb2.ServerReadyResponse(ready=self._spec() is not None)

    async def ModelReady(
        self, request: inference_pb2.ModelReadyRequest, context: object
    ) -> inference_pb2.ModelReadyResponse:
        return inference_pb2.ModelReadyResponse(
            ready=request.name == self._model_name and self._spec() is not None
        )

    async def ServerMetadata(self, request: object, context: object) -> inference_pb2.ServerMetadataResponse:
        return inference_pb2.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=[])

    async def ModelMetadata(
        self, request: inference_pb2.ModelMetadataRequest, context: object
    ) -> inference_pb2.ModelMetadataResponse:
        spec = self._ready_spec(request.name, request.version)
        meta = inference_pb2.ModelMetadataResponse.TensorMetadata
        classes = spec.num_classes
        return inference_pb2.ModelMetadataResponse(
            name=self._model_name,
            versions=[MODEL_VERSION],
            platform=f"coded-invnet/{self._mode}",
            inputs=[meta(name=spec.input_name, datatype="FP32", shape=[-1, *spec.image_shape])],
            outputs=[
                meta(name="logits", datatype="FP32", shape=[-1, classes]),
                meta(name="probabilities", datatype="FP32", shape=[-1, classes]),
                meta(name="class", datatype="INT64", shape=[-1]),
                meta(name="reconstructed", datatype="BOOL", shape=[-1]),
            ],
        )

    # --- inference
    async def ModelInfer(
        self, request: inference_pb2.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.ModelInferResponse:
        return await self._infer(request, context.time_remaining())

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[inference_pb2.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[inference_pb2.ModelStreamInferResponse]:
        """Requests run concurrently; responses go out in completion order (match them by `id`)."""
        answers: asyncio.Queue[inference_pb2.ModelStreamInferResponse | None] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()

        async def answer(request: inference_pb2.ModelInferRequest) -> None:
            try:
                response = await self._infer(request, context.time_remaining())
                await answers.put(inference_pb2.ModelStreamInferResponse(infer_response=response))
            except Exception as error:
                code, message = status_of(error)
                await answers.put(
                    inference_pb2.ModelStreamInferResponse(
                        error_message=f"{code.name}: {message}",
                        infer_response=inference_pb2.ModelInferResponse(
                            model_name=request.model_name, id=request.id
                        ),
                    )
                )

        async def read_all() -> None:
            try:
                async for request in request_iterator:
                    task = asyncio.create_task(answer(request))
                    running.add(task)
                    task.add_done_callback(running.discard)
                while running:
                    await asyncio.gather(*list(running))
            finally:
                await answers.put(None)  # also when the request stream breaks

        reader = asyncio.create_task(read_all())
        try:
            while (response := await answers.get()) is not None:
                yield response
            await reader  # re-raise a broken request stream
        finally:
            reader.cancel()
            for task in running:
                task.cancel()

    async def _infer(
        self, request: inference_pb2.ModelInferRequest, timeout: float | None
    ) -> inference_pb2.ModelInferResponse:
        started = time.perf_counter()
        try:
            spec = self._ready_spec(request.model_name, request.model_version)
            images = self._images(request, spec)
            wanted = self._wanted_outputs(request)
            answer = Answer(await self._batcher.infer(images, timeout), self._mode)
            response = self._response(request, answer, wanted)
        except ServingError as error:
            self._metrics.record_failure(error.status, (time.perf_counter() - started) * 1e6)
            raise
        request_us = (time.perf_counter() - started) * 1e6
        queue_us = max(r.queue_s for r in answer.results) * 1e6
        self._metrics.record_success(RequestTiming(len(images), request_us, queue_us, request_us - queue_us))
        return response

    def _ready_spec(self, name: str, version: str) -> ModelSpec:
        if name != self._model_name:
            raise NotFound(f"unknown model {name!r}; this server serves {self._model_name!r}")
        if version not in ("", MODEL_VERSION):
            raise NotFound(f"model {name!r} has no version {version!r}; available: {MODEL_VERSION!r}")
        spec = self._spec()
        if spec is None:
            raise Unavailable("the frontend is starting: its data workers have not answered yet")
        return spec

    def _images(self, request: inference_pb2.ModelInferRequest, spec: ModelSpec) -> np.ndarray:
        if len(request.inputs) != 1:
            raise InvalidInput(f"expected exactly one input {spec.input_name!r}, got {len(request.inputs)}")
        tensor = request.inputs[0]
        expected = [-1, *spec.image_shape]
        if tensor.name != spec.input_name:
            raise InvalidInput(f"unknown input {tensor.name!r}; the model's input is {spec.input_name!r}")
        if tensor.datatype != "FP32":
            raise InvalidInput(f"input {tensor.name!r} must be FP32, got {tensor.datatype!r}")
        if len(tensor.shape) != len(expected) or list(tensor.shape[1:]) != expected[1:]:
            raise InvalidInput(f"input {tensor.name!r} has shape {list(tensor.shape)}; expected {expected}")
        if request.raw_input_contents:
            if len(request.raw_input_contents) != 1:
                raise InvalidInput(f"{len(request.raw_input_contents)} raw_input_contents for one input")
            data = request.raw_input_contents[0]
        else:
            data = np.asarray(tensor.contents.fp32_contents, dtype="<f4").tobytes()
        return decode_array(tensor.name, tensor.datatype, tensor.shape, data, max_bytes=self._max_bytes)

    @staticmethod
    def _wanted_outputs(request: inference_pb2.ModelInferRequest) -> list[str]:
        wanted = [o.name for o in request.outputs] or list(OUTPUTS)
        unknown = set(wanted) - set(OUTPUTS)
        if unknown:
            raise InvalidInput(f"unknown outputs {sorted(unknown)}; available: {list(OUTPUTS)}")
        return wanted

    def _response(
        self, request: inference_pb2.ModelInferRequest, answer: Answer, wanted: list[str]
    ) -> inference_pb2.ModelInferResponse:
        outputs = answer.outputs()
        response = inference_pb2.ModelInferResponse(
            model_name=self._model_name, model_version=MODEL_VERSION, id=request.id
        )
        reconstructed = int(outputs["reconstructed"].sum())
        response.parameters["coding_mode"].CopyFrom(Parameter(string_param=answer.mode))
        response.parameters["reconstructed"].CopyFrom(Parameter(bool_param=reconstructed > 0))
        response.parameters["reconstructed_count"].CopyFrom(Parameter(int64_param=reconstructed))
        for name in wanted:
            datatype, shape, data = encode_array(outputs[name])
            response.outputs.add(name=name, datatype=datatype, shape=shape)
            response.raw_output_contents.append(data)
        return response
