"""The decoder's runtime on synthetic latents: every set of up to r missing members comes back exactly
from exact parities, in one call, whatever rows the missing members hold."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from coded_invnet.coding import parity_coefficients
from coded_invnet.serving.errors import InvalidInput
from coded_invnet.serving.metrics import ServingMetrics
from services.decoder.runtime import DecoderRuntime


@pytest.mark.parametrize(("k", "r"), [(4, 1), (4, 2), (10, 2), (10, 3)])
def test_every_missing_set_is_recovered_exactly(k: int, r: int) -> None:
    runtime = DecoderRuntime("coded-invnet", k, r, None, ServingMetrics("decoder"))  # no head: z itself
    latents = np.random.default_rng(k + r).normal(size=(k, 3, 6))  # (k, B, D)
    parities = np.einsum("mk,kbd->mbd", parity_coefficients(k, r), latents)  # (r, B, D)
    for s in range(1, r + 1):
        choices = (list(range(r))[-s:], list(range(r)))  # the last s parities (not only the mean); all r
        for missing, rows in itertools.product(
            itertools.islice(itertools.combinations(range(k), s), 12), choices
        ):
            members = latents.copy()
            members[list(missing)] = 1e3  # ignored
            feeds = {
                "parities": parities[rows],
                "members": members,
                "missing": np.array(missing),
                "parity_rows": np.array(rows),
            }
            computed = asyncio.run(runtime.decode(feeds))
            np.testing.assert_allclose(computed.outputs["logits"], latents[list(missing)], atol=1e-9)
            assert computed.rows == s * 3  # the queries reconstructed, for the metrics


def test_bad_index_tensors_are_invalid_input() -> None:
    runtime = DecoderRuntime("coded-invnet", 4, 2, None, ServingMetrics("decoder"))
    feeds = {
        "parities": np.zeros((1, 2, 3)),
        "members": np.zeros((4, 2, 3)),
        "missing": np.array([0.5]),
        "parity_rows": np.array([0]),
    }
    with pytest.raises(InvalidInput, match='"missing" must be a 1-D integer tensor'):
        asyncio.run(runtime.decode(feeds))
    with pytest.raises(InvalidInput, match="missing \\[4\\]"):
        asyncio.run(runtime.decode({**feeds, "missing": np.array([4])}))
