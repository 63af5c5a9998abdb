"""Client SDK (sync and asyncio) against the running system: typed results, batches, streams, deadlines."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers import random_images, reference_logits

from coded_invnet.client import AsyncClient, Client, Prediction
from coded_invnet.tools.launcher import System


def check(predictions: list[Prediction], expected_logits: np.ndarray) -> None:
    assert len(predictions) == len(expected_logits)
    for prediction, logits in zip(predictions, expected_logits, strict=True):
        assert prediction.label == int(logits.argmax())
        np.testing.assert_allclose(prediction.logits, logits, rtol=1e-4, atol=1e-4)
        assert prediction.probabilities.shape == (10,) and abs(prediction.probabilities.sum() - 1) < 1e-5
        assert prediction.reconstructed is False and prediction.coding_mode == "coded-invnet"
        assert prediction.latency_ms > 0


def test_sync_client(coded_system: System, model_dir: Path) -> None:
    images = random_images(20)
    expected = reference_logits(model_dir, images)
    with Client(coded_system.frontend.target, timeout_s=10) as client:
        assert client.ready()
        check([client.predict(images[0])], expected[:1])
        check(client.predict_batch(images[:5]), expected[:5])
        results = sorted(
            client.stream((images[i : i + 2] for i in range(0, 20, 2)), window=3), key=lambda r: r.index
        )
    assert [r.index for r in results] == list(range(10))
    check([p for r in results for p in r.predictions], expected)


def test_async_client(coded_system: System, model_dir: Path) -> None:
    images = random_images(12)
    expected = reference_logits(model_dir, images)

    async def scenario() -> None:
        async with AsyncClient(coded_system.frontend.target, timeout_s=10) as client:
            assert await client.ready()
            check([await client.predict(images[0])], expected[:1])
            check(await client.predict_batch(images[:4]), expected[:4])
            check(list(await asyncio.gather(*(client.predict(image) for image in images))), expected)
            results = [r async for r in client.stream(iter(images), window=4)]
            check([r.predictions[0] for r in sorted(results, key=lambda r: r.index)], expected)

    asyncio.run(scenario())


def test_unknown_model_raises_not_found(coded_system: System) -> None:
    with Client(coded_system.frontend.target, model="nope") as client, pytest.raises(grpc.RpcError) as caught:
        client.predict(random_images(1)[0])
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
