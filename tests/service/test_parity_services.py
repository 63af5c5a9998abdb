"""Encoder and decoder services with r = 2 parities over real gRPC: the encoder answers (B, r, C, H, W),
the decoder reconstructs any s ≤ r missing members exactly from exact parities, in one call."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from helpers import IMAGE, batch, images, outputs, parity_model_dir, running, service_config

from coded_invnet.coding import parity_coefficients
from coded_invnet.proto import coded_pb2_grpc
from coded_invnet.serving.errors import ConfigError
from coded_invnet.serving.onnx_model import OnnxModel
from services.decoder.server import start as start_decoder
from services.encoder.server import load_checked
from services.encoder.server import start as start_encoder

K, R = 4, 2


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return parity_model_dir(K, R, tmp_path_factory.mktemp("parity-models"))


def test_encoder_answers_r_parities(models: Path) -> None:
    groups = images(3, k=K)  # (B, k, C, H, W)
    session = ort.InferenceSession(
        str(models / f"encoder_k{K}_r{R}.onnx"), providers=["CPUExecutionProvider"]
    )
    (expected,) = session.run(None, {"x": groups})

    async def scenario() -> None:
        cfg = service_config("encoder", models, k=K, parities=R)
        async with running(start_encoder, cfg) as channel:
            parity = outputs(
                await coded_pb2_grpc.EncoderStub(channel).Encode(batch(1, K, x=groups), timeout=10)
            )
            assert parity["parity"].shape == (3, R, *IMAGE)
            np.testing.assert_allclose(parity["parity"], expected, atol=1e-5)

    asyncio.run(scenario())


def test_encoder_refuses_a_model_of_another_r(models: Path, model_dir: Path) -> None:
    load_checked(OnnxModel(models / f"encoder_k{K}_r{R}.onnx", "cpu", 1), R)
    with pytest.raises(ConfigError, match=f"CODED_PARITIES={R}, but encoder_k2.onnx outputs parity"):
        load_checked(OnnxModel(model_dir / "encoder_k2.onnx", "cpu", 1), R)
    with pytest.raises(ConfigError, match="CODED_PARITIES=1"):
        load_checked(OnnxModel(models / f"encoder_k{K}_r{R}.onnx", "cpu", 1), 1)


def test_decoder_reconstructs_every_missing_set(models: Path) -> None:
    session = ort.InferenceSession(str(models / "worker.onnx"), providers=["CPUExecutionProvider"])
    groups = images(3, k=K)
    runs = [session.run(None, {"x": groups[:, i]}) for i in range(K)]
    logits, latents = np.stack([r[0] for r in runs]), np.stack([r[1] for r in runs])  # (k, B, ·)
    a = parity_coefficients(K, R)
    parities = np.einsum("mk,kbd->mbd", a, latents).astype(np.float32)  # exact parities (r, B, D)
    cases = [([1, 3], [0, 1]), ([3, 0], [1, 0]), ([2], [1]), ([0], [0]), ([2], [0, 1])]  # last: least squares

    async def scenario() -> None:
        async with running(start_decoder, service_config("decoder", models, k=K, parities=R)) as channel:
            stub = coded_pb2_grpc.DecoderStub(channel)
            for g, (missing, rows) in enumerate(cases):
                members = latents.copy()
                members[missing] = 0.0  # a missing member's rows are any values
                request = batch(
                    g,
                    missing[0],
                    parities=parities[rows],
                    members=members,
                    missing=np.array(missing, dtype=np.int64),
                    parity_rows=np.array(rows, dtype=np.int64),
                )
                got = outputs(await stub.Decode(request, timeout=10))
                assert got["logits"].shape == (len(missing), 3, 10)
                np.testing.assert_allclose(got["z"], latents[missing], rtol=1e-3, atol=1e-3)
                np.testing.assert_allclose(got["logits"], logits[missing], rtol=1e-3, atol=1e-3)

            with pytest.raises(grpc.aio.AioRpcError) as caught:  # two missing, one parity
                await stub.Decode(
                    batch(
                        9,
                        0,
                        parities=parities[:1],
                        members=latents,
                        missing=np.array([0, 1], dtype=np.int64),
                        parity_rows=np.array([0], dtype=np.int64),
                    ),
                    timeout=5,
                )
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "parities [0]" in (caught.value.details() or "")

    asyncio.run(scenario())
