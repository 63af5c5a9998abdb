"""What the sync and asyncio clients share: typed results, request building, response parsing."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from coded_invnet.proto import inference_pb2
from coded_invnet.rpc.channels import DEFAULT_TIMEOUT_S, TlsOptions

DEFAULT_MODEL = "mnist"


class PredictionError(RuntimeError):
    """The server answered a (streamed) request with an error; `status` names the gRPC status."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.status = message.split(":", 1)[0] if ":" in message else "UNKNOWN"


class ClientBase:
    """What the blocking and asyncio clients share: their settings, and the channel they open."""

    def __init__(
        self,
        target: str,
        model: str = DEFAULT_MODEL,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        tls: TlsOptions | None = None,
        wait_for_ready: bool = False,
    ) -> None:
        self.model = model
        self.timeout_s = timeout_s
        self.wait_for_ready = wait_for_ready
        self._connect(target, timeout_s, tls)

    def _connect(self, target: str, timeout_s: float, tls: TlsOptions | None) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Prediction:
    """One query's answer."""

    label: int  # the predicted class
    probabilities: np.ndarray  # (classes,)
    logits: np.ndarray  # (classes,)
    reconstructed: bool  # decoded from the parity instead of computed by its own worker
    coding_mode: str  # "none", "replication", "parm" or "coded-invnet"
    latency_ms: float  # client-side round trip of the request that carried this query


@dataclass(frozen=True)
class StreamResult:
    """A streamed request's outcome: its predictions or the server's error. `index`: position sent."""

    index: int
    predictions: list[Prediction]
    error: PredictionError | None = None


def as_batch(images: np.ndarray, image_ndim: int = 3) -> np.ndarray:
    """One image (C, H, W) or a batch (N, C, H, W) → float32 batch."""
    array = np.asarray(images, dtype=np.float32)
    return array[None] if array.ndim == image_ndim else array


def build_request(images: np.ndarray, model: str, request_id: str = "") -> inference_pb2.ModelInferRequest:
    batch = np.ascontiguousarray(as_batch(images), dtype="<f4")
    request = inference_pb2.ModelInferRequest(model_name=model, id=request_id)
    request.inputs.add(name="x", datatype="FP32", shape=list(batch.shape))
    request.raw_input_contents.append(batch.tobytes())
    return request


def parse_response(response: inference_pb2.ModelInferResponse, latency_ms: float) -> list[Prediction]:
    outputs = {
        tensor.name: (tensor, data)
        for tensor, data in zip(response.outputs, response.raw_output_contents, strict=True)
    }

    def output(name: str, dtype: str) -> np.ndarray:
        tensor, data = outputs[name]
        return np.frombuffer(data, dtype=dtype).reshape(tuple(tensor.shape))

    logits, probabilities = output("logits", "<f4"), output("probabilities", "<f4")
    labels, reconstructed = output("class", "<i8"), output("reconstructed", "?")
    mode = response.parameters["coding_mode"].string_param
    return [
        Prediction(int(labels[i]), probabilities[i], logits[i], bool(reconstructed[i]), mode, latency_ms)
        for i in range(len(labels))
    ]


def stream_result(reply: inference_pb2.ModelStreamInferResponse, sent_at: dict[str, float]) -> StreamResult:
    """A stream reply → its result; pops the request's send time from ``sent_at``."""
    request_id = reply.infer_response.id
    latency_ms = (time.perf_counter() - sent_at.pop(request_id)) * 1e3
    if reply.error_message:
        return StreamResult(int(request_id), [], PredictionError(reply.error_message))
    return StreamResult(int(request_id), parse_response(reply.infer_response, latency_ms))
