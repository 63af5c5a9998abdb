"""Decoder runtime (no gRPC): latent decode + head (coded-invnet), or subtraction in logit space (parm)."""

from __future__ import annotations

import time

import numpy as np

from coded_invnet.coding import CodingError, decode_missing
from coded_invnet.serving.errors import InvalidInput
from coded_invnet.serving.metrics import ServingMetrics
from coded_invnet.serving.onnx_model import Computed, OnnxModel

INPUTS = ("parity", "available")


class DecoderRuntime:
    """`head` is the head model for coded-invnet; None for parm, whose decode is the answer itself."""

    def __init__(self, mode: str, k: int, head: OnnxModel | None, metrics: ServingMetrics) -> None:
        self.mode = mode
        self.k = k
        self.head = head
        self.metrics = metrics

    def warm_up(self) -> None:
        if self.head is not None:
            self.head.load()

    async def decode(self, feeds: dict[str, np.ndarray]) -> Computed:
        """feeds: "parity" (B, D) and "available" (k-1, B, D) → "logits" (B, classes) [+ "z" (B, D)]."""
        if set(feeds) != set(INPUTS):
            raise InvalidInput(f"inputs {sorted(feeds)} given; the decoder takes {list(INPUTS)}")
        start = time.perf_counter()
        try:
            recovered = decode_missing(feeds["parity"], feeds["available"], self.k)
        except CodingError as error:
            raise InvalidInput(str(error)) from None
        outputs = {"logits": recovered}
        if self.head is not None:
            outputs = {"logits": (await self.head.infer({"z": recovered})).outputs["logits"], "z": recovered}
        elapsed_us = (time.perf_counter() - start) * 1e6
        self.metrics.record_decode(self.mode, elapsed_us)
        return Computed(outputs, elapsed_us)
