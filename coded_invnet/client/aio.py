"""asyncio client for the frontend (Open Inference Protocol over gRPC)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable

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
from coded_invnet.rpc.channels import TlsOptions, create_channel


class AsyncClient(ClientBase):
    """``async with AsyncClient("127.0.0.1:8001") as client: (await client.predict(image)).label``

    Create it inside the running event loop. Deadlines, UNAVAILABLE retries and ``tls`` as in `Client`.
    """

    _stub: inference_pb2_grpc.GRPCInferenceServiceAsyncStub

    def _connect(self, target: str, timeout_s: float, tls: TlsOptions | None) -> None:
        self._channel = create_channel(target, timeout_s=timeout_s, tls=tls)
        self._stub = inference_pb2_grpc.GRPCInferenceServiceStub(self._channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close(None)

    async def ready(self, timeout_s: float | None = None) -> bool:
        request = inference_pb2.ModelReadyRequest(name=self.model)
        return bool((await self._stub.ModelReady(request, timeout=timeout_s or self.timeout_s)).ready)

    async def predict(self, image: np.ndarray, timeout_s: float | None = None) -> Prediction:
        """One image (C, H, W) → its prediction."""
        return (await self.predict_batch(image, timeout_s))[0]

    async def predict_batch(self, images: np.ndarray, timeout_s: float | None = None) -> list[Prediction]:
        """Images (N, C, H, W) in one request → N predictions, in order."""
        started = time.perf_counter()
        request = build_request(images, self.model)
        response = await self._stub.ModelInfer(
            request, timeout=timeout_s or self.timeout_s, wait_for_ready=self.wait_for_ready
        )
        return parse_response(response, (time.perf_counter() - started) * 1e3)

    async def stream(
        self, batches: Iterable[np.ndarray], window: int = 64, timeout_s: float | None = None
    ) -> AsyncIterator[StreamResult]:
        """Like `Client.stream`: one ModelStreamInfer stream, ≤ ``window`` unanswered, completion order."""
        slots = asyncio.Semaphore(window)
        sent_at: dict[str, float] = {}
        call = self._stub.ModelStreamInfer(timeout=timeout_s, wait_for_ready=self.wait_for_ready)  # type: ignore[call-arg]

        async def send_all() -> None:
            for index, images in enumerate(batches):
                await slots.acquire()
                sent_at[str(index)] = time.perf_counter()
                await call.write(build_request(images, self.model, str(index)))
            await call.done_writing()

        sender = asyncio.create_task(send_all())
        try:
            async for reply in call:
                slots.release()
                yield stream_result(reply, sent_at)
            await sender  # surface a failure to send
        finally:
            sender.cancel()
            call.cancel()
