"""The frontend's data plane in process: cheapest checks first, admission before decoding, a byte budget
for the requests held at once, client strings quoted short."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from helpers import LINEAR_IMAGE, LinearBackends

from coded_invnet.serving.config import ServingConfig
from coded_invnet.serving.errors import InvalidInput, NotFound, Overloaded
from coded_invnet.serving.metrics import ServingMetrics
from services.frontend.batcher import Batcher
from services.frontend.inference import InferenceService, InferRequest, InputTensor, ModelSpec

SPEC = ModelSpec("x", LINEAR_IMAGE, 10)


def request(images: np.ndarray, model: str = "mnist", client: str = "a") -> InferRequest:
    tensor = InputTensor("x", "FP32", tuple(images.shape), images.astype("<f4").tobytes())
    return InferRequest(model, "", [tensor], [], client, 5.0)


def service(batcher: Batcher, budget: int) -> InferenceService:
    metrics = ServingMetrics("mnist")  # its own registry
    return InferenceService(batcher, "mnist", metrics, lambda: SPEC, 1 << 20, budget)


def test_a_request_that_cannot_be_admitted_is_refused_before_its_contents_are_read() -> None:
    async def scenario() -> None:
        cfg = ServingConfig(service="frontend", mode="none", k=2, max_queue_per_client=4)
        batcher = Batcher(cfg, LinearBackends("none"))
        nan = np.full((5, *LINEAR_IMAGE), np.nan, np.float32)  # too many rows AND garbage contents
        with pytest.raises(Overloaded, match="a client may queue at most 4"):
            await service(batcher, 1 << 20).infer(request(nan))
        with pytest.raises(InvalidInput, match="NaN"):  # the same contents, admissible size
            await service(batcher, 1 << 20).infer(request(nan[:2]))
        with pytest.raises(NotFound) as caught:
            await service(batcher, 1 << 20).infer(request(nan[:1], model="m" * 100_000))
        assert len(str(caught.value)) < 300 and "100000 characters" in str(caught.value)

    asyncio.run(scenario())


def test_requests_held_at_once_stay_within_the_byte_budget() -> None:
    async def scenario() -> None:
        backends = LinearBackends("none", delays={0: 0.3, 1: 0.3})
        batcher = Batcher(ServingConfig(service="frontend", mode="none", k=2), backends)
        batcher.start()
        images = np.zeros((4, *LINEAR_IMAGE), np.float32)
        plane = service(batcher, budget=images.nbytes + 10)
        try:
            first = asyncio.create_task(plane.infer(request(images, client="a")))
            await asyncio.sleep(0.05)  # the first request is held, being computed
            with pytest.raises(Overloaded, match="budget"):
                await plane.infer(request(images, client="b"))
            assert len((await first).outputs["class"]) == 4
            assert len((await plane.infer(request(images, client="b"))).outputs["class"]) == 4  # freed
        finally:
            await batcher.stop()

    asyncio.run(scenario())
