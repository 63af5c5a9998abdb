"""The frontend's data plane (no gRPC): checks a request, admits it, batches it, shapes the answer.

Checks run cheapest first: names, then the declared shape and datatype against the model and the queue's
bounds, and only then the contents (byte count, NaN/Inf scan), so that a request that will be refused
costs no more than reading it. Client-supplied strings are quoted truncated in error messages.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from coded_invnet.serving.errors import InvalidInput, NotFound, Overloaded, ServingError, Unavailable, quoted
from coded_invnet.serving.metrics import RequestTiming, ServingMetrics
from coded_invnet.serving.tensors import DTYPES, decode_array
from services.frontend.batcher import Batcher
from services.frontend.group import QueryResult

MODEL_VERSION = "1"
OUTPUTS = ("logits", "probabilities", "class", "reconstructed")
INPUT_DATATYPE = "FP32"


@dataclass(frozen=True)
class ModelSpec:
    """The data workers' model as the frontend serves it."""

    input_name: str
    image_shape: tuple[int, ...]  # (C, H, W)
    num_classes: int


@dataclass(frozen=True)
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: bytes


@dataclass(frozen=True)
class InferRequest:
    """One Open Inference Protocol request, as the domain sees it."""

    model_name: str
    model_version: str
    inputs: Sequence[InputTensor]
    outputs: Sequence[str]  # empty: every output
    client: str  # whom the per-client queue bound counts this against
    timeout_s: float | None


@dataclass(frozen=True)
class InferAnswer:
    outputs: dict[str, np.ndarray]  # the wanted outputs, in the order asked for
    reconstructed: int  # rows decoded from the parity


def prediction_outputs(results: Sequence[QueryResult]) -> dict[str, np.ndarray]:
    """Every output of the model for a request's rows: logits, softmax, argmax and the coding flag."""
    logits = np.stack([r.logits for r in results]).astype(np.float32)  # (n, classes)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return {
        "logits": logits,
        "probabilities": shifted / shifted.sum(axis=1, keepdims=True),
        "class": logits.argmax(axis=1).astype(np.int64),
        "reconstructed": np.array([r.reconstructed for r in results], dtype=np.bool_),
    }


class InferenceService:
    def __init__(
        self,
        batcher: Batcher,
        model_name: str,
        metrics: ServingMetrics,
        spec: Callable[[], ModelSpec | None],
        max_request_bytes: int,
        bytes_budget: int,
    ) -> None:
        self._batcher = batcher
        self.model_name = model_name
        self._metrics = metrics
        self._spec = spec  # None until the data workers have described their model
        self._max_request_bytes = max_request_bytes
        self._bytes_budget = bytes_budget
        self._bytes_held = 0  # input bytes of the requests admitted and not yet answered

    def ready(self, name: str | None = None) -> bool:
        return (name is None or name == self.model_name) and self._spec() is not None

    def ready_spec(self, name: str, version: str) -> ModelSpec:
        if name != self.model_name:
            raise NotFound(f"unknown model {quoted(name)}; this server serves {self.model_name!r}")
        if version not in ("", MODEL_VERSION):
            raise NotFound(
                f"model {quoted(name)} has no version {quoted(version)}; available: {MODEL_VERSION!r}"
            )
        spec = self._spec()
        if spec is None:
            raise Unavailable("the frontend is starting: its data workers have not answered yet")
        return spec

    async def infer(self, request: InferRequest) -> InferAnswer:
        started = time.perf_counter()
        held = 0
        try:
            spec = self.ready_spec(request.model_name, request.model_version)
            wanted = self._wanted_outputs(request.outputs)
            held = self._hold(request)
            images = self._images(request, spec)
            results = await self._batcher.infer(images, request.timeout_s, request.client)
        except ServingError as error:
            self._metrics.record_failure(error.reason, (time.perf_counter() - started) * 1e6)
            raise
        finally:
            self._bytes_held -= held
        outputs = prediction_outputs(results)
        request_us = (time.perf_counter() - started) * 1e6
        queue_us = max(r.queue_s for r in results) * 1e6
        self._metrics.record_success(RequestTiming(len(images), request_us, queue_us, request_us - queue_us))
        return InferAnswer({name: outputs[name] for name in wanted}, int(outputs["reconstructed"].sum()))

    def _hold(self, request: InferRequest) -> int:
        """Count the request's input bytes against the budget, or refuse it (RESOURCE_EXHAUSTED)."""
        size = sum(len(tensor.data) for tensor in request.inputs)
        if self._bytes_held + size > self._bytes_budget:
            raise Overloaded(
                f"the frontend holds {self._bytes_held} bytes of requests (budget {self._bytes_budget}); "
                "retry later"
            )
        self._bytes_held += size
        return size

    def _images(self, request: InferRequest, spec: ModelSpec) -> np.ndarray:
        if len(request.inputs) != 1:
            raise InvalidInput(f"expected exactly one input {spec.input_name!r}, got {len(request.inputs)}")
        tensor = request.inputs[0]
        expected = [-1, *spec.image_shape]
        if tensor.name != spec.input_name:
            raise InvalidInput(
                f"unknown input {quoted(tensor.name)}; the model's input is {spec.input_name!r}"
            )
        if tensor.datatype != INPUT_DATATYPE:
            raise InvalidInput(f"input {spec.input_name!r} must be FP32, got {quoted(tensor.datatype)}")
        if len(tensor.shape) != len(expected) or list(tensor.shape[1:]) != expected[1:]:
            raise InvalidInput(
                f"input {spec.input_name!r} has shape {list(tensor.shape)[:8]}; expected {expected}"
            )
        declared = max(tensor.shape[0], 0) * math.prod(spec.image_shape) * DTYPES[INPUT_DATATYPE].itemsize
        if declared > self._max_request_bytes:
            raise Overloaded(
                f"the request declares {declared} bytes of input; the limit is {self._max_request_bytes}: "
                "split it"
            )
        self._batcher.admit(tensor.shape[0], request.client)  # refused here, before the contents are read
        return decode_array(tensor.name, tensor.datatype, tensor.shape, tensor.data, max_bytes=declared)

    @staticmethod
    def _wanted_outputs(outputs: Sequence[str]) -> list[str]:
        wanted = list(outputs) or list(OUTPUTS)
        unknown = set(wanted) - set(OUTPUTS)
        if unknown:
            names = sorted(quoted(name, 32) for name in unknown)[:8]
            raise InvalidInput(f"unknown outputs {', '.join(names)}; available: {list(OUTPUTS)}")
        return wanted
