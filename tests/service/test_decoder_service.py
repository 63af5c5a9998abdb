"""Decoder service over real gRPC (one parity): a missing member is reconstructed exactly when the parity is
exact."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from helpers import K, batch, images, outputs, running, service_config

from coded_invnet.proto import coded_pb2, coded_pb2_grpc
from services.decoder.server import start as start_decoder


def worker_outputs(model_dir: Path, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(k, B, classes) logits and (k, B, D) latents of each member of the group."""
    session = ort.InferenceSession(str(model_dir / "worker.onnx"), providers=["CPUExecutionProvider"])
    runs = [session.run(None, {"x": groups[:, i]}) for i in range(groups.shape[1])]
    return np.stack([r[0] for r in runs]), np.stack([r[1] for r in runs])


def decode_request(
    group_id: int, missing: list[int], parities: np.ndarray, members: np.ndarray
) -> coded_pb2.Batch:
    """Decode `missing` from the first len(missing) parity rows; the missing members' rows zeroed."""
    members = members.copy()
    members[missing] = 0.0
    rows = np.arange(len(missing), dtype=np.int64)
    return batch(
        group_id, missing[0], parities=parities, members=members, missing=np.array(missing), parity_rows=rows
    )


@pytest.mark.parametrize("mode", ["coded-invnet", "parm"])
def test_decode_recovers_each_missing_member(model_dir: Path, mode: str) -> None:
    logits, latents = worker_outputs(model_dir, images(3, k=K))
    members = latents if mode == "coded-invnet" else logits
    parity = members.mean(0)  # an exact parity: what a perfect F_k / ParM model would produce

    async def scenario() -> None:
        async with running(start_decoder, service_config("decoder", model_dir, mode=mode)) as channel:
            stub = coded_pb2_grpc.DecoderStub(channel)
            requests = [decode_request(9, [missing], parity[None], members) for missing in range(K)]
            results = [r async for r in stub.DecodeStream(iter(requests), timeout=10)]
            assert sorted(r.index for r in results) == list(range(K))
            for result in results:
                got = outputs(result)["logits"]  # (1, B, classes): one missing member
                np.testing.assert_allclose(got[0], logits[result.index], rtol=1e-4, atol=1e-4)

            with pytest.raises(grpc.aio.AioRpcError) as caught:  # k-1 members instead of k
                await stub.Decode(decode_request(9, [0], parity[None], members[1:]), timeout=5)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"expected members ({K}, B, D)" in (caught.value.details() or "")

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Decode(batch(9, 0, parities=parity[None]), timeout=5)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "members" in (caught.value.details() or "")

    asyncio.run(scenario())
