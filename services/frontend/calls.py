"""What a coding group calls, and what it gets back: the `Backends` protocol (gRPC in backends.py, in
process in the tests)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from services.frontend.pool import Placement


@dataclass(frozen=True)
class WorkerOutput:
    logits: np.ndarray  # (b, classes)
    z: np.ndarray | None  # (b, D); None when the model has no latent output


class Backends(Protocol):
    """The calls a group makes; each raises on failure and is cancellable."""

    def place(self, group_id: int, k: int) -> Placement:
        """The workers of group `group_id`: k for its data batches, r for its parity."""
        ...

    def parallel_groups(self, k: int) -> int:
        """How many groups of k + r distinct workers the pool holds at once (at least 1)."""
        ...

    async def infer(self, worker: str, group_id: int, index: int, images: np.ndarray) -> WorkerOutput: ...

    async def encode(self, group_id: int, batches: np.ndarray) -> np.ndarray:
        """(b, k, C, H, W) data batches → (b, r, C, H, W) parity images."""
        ...

    async def infer_parity(
        self, worker: str, group_id: int, row: int, parity_images: np.ndarray
    ) -> np.ndarray:
        """Parity batch `row` (b, C, H, W) → what decoding needs: z_p (coded-invnet) or parm logits."""
        ...

    async def decode(
        self,
        group_id: int,
        missing: Sequence[int],
        parity_rows: Sequence[int],
        parities: np.ndarray,
        members: np.ndarray,
    ) -> np.ndarray:
        """The p ≥ s parities of `parity_rows` (p, b, D) and every member (k, b, D; the rows of `missing`
        any values) → logits (s, b, classes) of the s members `missing`, in that order."""
        ...
