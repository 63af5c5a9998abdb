"""Encoder service over real gRPC: parity matches onnxruntime for both coded modes; bad groups rejected."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from helpers import K, batch, images, outputs, running, service_config

from coded_invnet.proto import coded_pb2, coded_pb2_grpc
from coded_invnet.serving.errors import ConfigError
from services.encoder.server import start as start_encoder


@pytest.mark.parametrize(
    ("mode", "model"), [("coded-invnet", f"encoder_k{K}.onnx"), ("parm", f"parm_encoder_k{K}.onnx")]
)
def test_parity_matches_onnxruntime(model_dir: Path, mode: str, model: str) -> None:
    groups = images(4, k=K)
    session = ort.InferenceSession(str(model_dir / model), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"x": groups})

    async def scenario() -> None:
        async with running(start_encoder, service_config("encoder", model_dir, mode=mode)) as channel:
            stub = coded_pb2_grpc.EncoderStub(channel)
            parity = outputs(await stub.Encode(batch(3, K, x=groups), timeout=10))["parity"]
            assert parity.shape == (4, 1, 28, 28)
            np.testing.assert_allclose(parity, expected, atol=1e-5)

            requests = [batch(g, K, x=groups[g : g + 1]) for g in range(4)]
            results = {
                r.group_id: outputs(r)["parity"] async for r in stub.EncodeStream(iter(requests), timeout=10)
            }
            assert sorted(results) == [0, 1, 2, 3]  # one result per streamed group, none lost
            for g, got in results.items():
                np.testing.assert_allclose(got, expected[g : g + 1], atol=1e-5)

            description = await stub.Describe(coded_pb2.DescribeRequest(), timeout=5)
            assert (description.model_name, description.k, description.mode) == (model, K, mode)

            with pytest.raises(grpc.aio.AioRpcError) as caught:  # a group of k+1 batches
                await stub.Encode(batch(0, K, x=images(2, k=K + 1)), timeout=5)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "shape" in (caught.value.details() or "")

    asyncio.run(scenario())


def test_encoder_refuses_uncoded_modes(model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="CODED_MODE"):
        asyncio.run(start_encoder(service_config("encoder", model_dir, mode="none")))
