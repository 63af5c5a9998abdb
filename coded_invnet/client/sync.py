"""Blocking client for the frontend (Open Inference Protocol over gRPC)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator

import numpy as np

from coded_invnet.client.core import (
    ClientBase,
    Prediction,
    StreamResult,
    build_request,
    parse_response,
    stream_result,
)
from coded_invnet.proto import inference_pb2, inference_pb2_grpc
from coded_invnet.rpc.channels import TlsOptions, create_sync_channel


class Client(ClientBase):
    """``with Client("127.0.0.1:8001") as client: client.predict(image).label``

    Every call has a deadline (``timeout_s``, per call overridable); UNAVAILABLE is retried by the
    channel's service config, not by this code. ``tls``: talk TLS (``TlsOptions(ca_file=...)``, with
    ``cert_file``/``key_file`` for mutual TLS); plaintext without it. ``wait_for_ready``: while the
    frontend is unreachable (restarting), wait for it until the deadline instead of failing at once.
    """

    _stub: inference_pb2_grpc.GRPCInferenceServiceStub

    def _connect(self, target: str, timeout_s: float, tls: TlsOptions | None) -> None:
        self._channel = create_sync_channel(target, timeout_s=timeout_s, tls=tls)
        self._stub = inference_pb2_grpc.GRPCInferenceServiceStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def ready(self, timeout_s: float | None = None) -> bool:
        reply = self._stub.ModelReady(
            inference_pb2.ModelReadyRequest(name=self.model), timeout=timeout_s or self.timeout_s
        )
        return bool(reply.ready)

    def predict(self, image: np.ndarray, timeout_s: float | None = None) -> Prediction:
        """One image (C, H, W) → its prediction."""
        return self.predict_batch(image, timeout_s)[0]

    def predict_batch(self, images: np.ndarray, timeout_s: float | None = None) -> list[Prediction]:
        """Images (N, C, H, W) in one request → N predictions, in order."""
        started = time.perf_counter()
        response = self._stub.ModelInfer(
            build_request(images, self.model),
            timeout=timeout_s or self.timeout_s,
            wait_for_ready=self.wait_for_ready,
        )
        return parse_response(response, (time.perf_counter() - started) * 1e3)

    def stream(
        self, batches: Iterable[np.ndarray], window: int = 64, timeout_s: float | None = None
    ) -> Iterator[StreamResult]:
        """Send each item of ``batches`` (an image or a batch) on one ModelStreamInfer stream.

        At most ``window`` requests are unanswered at a time (so the frontend's queue is not flooded);
        results come in completion order, each with the index it was sent at. ``timeout_s`` bounds the
        whole stream (default: none).
        """
        slots = threading.Semaphore(window)
        sent_at: dict[str, float] = {}
        stop = threading.Event()

        def requests() -> Iterator[inference_pb2.ModelInferRequest]:
            for index, images in enumerate(batches):
                while not slots.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                sent_at[str(index)] = time.perf_counter()
                yield build_request(images, self.model, str(index))

        responses = self._stub.ModelStreamInfer(
            requests(), timeout=timeout_s, wait_for_ready=self.wait_for_ready
        )
        try:
            for reply in responses:
                slots.release()
                yield stream_result(reply, sent_at)
        finally:
            stop.set()
            responses.cancel()
