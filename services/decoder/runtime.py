"""Decoder runtime (no gRPC): the missing members' latents from the parities, then the head
(coded-invnet), or the same solve in logit space (parm, whose decode is the answer itself)."""

from __future__ import annotations

import time

import numpy as np

from coded_invnet.coding import CodingError, decode_set, parity_coefficients
from coded_invnet.serving.errors import InvalidInput
from coded_invnet.serving.metrics import ServingMetrics
from coded_invnet.serving.onnx_model import Computed, OnnxModel

INPUTS = ("parities", "members", "missing", "parity_rows")


class DecoderRuntime:
    """`head` is the head model for coded-invnet; None for parm. The code is A = parity_coefficients(k, r)."""

    def __init__(
        self, mode: str, k: int, parities: int, head: OnnxModel | None, metrics: ServingMetrics
    ) -> None:
        self.mode = mode
        self.coefficients = parity_coefficients(k, parities)  # (r, k)
        self.head = head
        self.metrics = metrics

    def warm_up(self) -> None:
        if self.head is not None:
            self.head.load()

    async def decode(self, feeds: dict[str, np.ndarray]) -> Computed:
        """feeds: "parities" (p, B, D) from the parity rows "parity_rows" (p,), p ≥ s (least squares
        when p > s), "members" (k, B, D) (the rows of the s members in "missing" (s,) are ignored)
        → "logits" (s, B, classes) [+ "z" (s, B, D)], in the order of "missing"."""
        if set(feeds) != set(INPUTS):
            raise InvalidInput(f"inputs {sorted(feeds)} given; the decoder takes {list(INPUTS)}")
        start = time.perf_counter()
        missing, rows = _indices(feeds, "missing"), _indices(feeds, "parity_rows")
        try:
            recovered = decode_set(self.coefficients, rows, feeds["parities"], feeds["members"], missing)
        except CodingError as error:
            raise InvalidInput(str(error)) from None
        outputs = {"logits": recovered}
        if self.head is not None:
            s, b = recovered.shape[:2]
            flat = recovered.reshape(s * b, *recovered.shape[2:])  # (s·B, D)
            logits = (await self.head.infer({"z": flat})).outputs["logits"]  # (s·B, classes)
            outputs = {"logits": logits.reshape(s, b, -1), "z": recovered}
        elapsed_us = (time.perf_counter() - start) * 1e6
        self.metrics.record_decode(self.mode, elapsed_us)
        return Computed(outputs, elapsed_us, rows=recovered.shape[0] * recovered.shape[1])  # s·B queries


def _indices(feeds: dict[str, np.ndarray], name: str) -> list[int]:
    array = feeds[name]
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise InvalidInput(f'"{name}" must be a 1-D integer tensor, got {array.dtype} {list(array.shape)}')
    return [int(i) for i in array]
