"""Coding math shared by training, evaluation and the decoder service (numpy and torch alike).

A coding group holds k data queries x_1..x_k and one parity query x_p. Workers return z_i = g(x_i);
the parity worker returns z_p = g(x_p) with x_p ≈ g⁻¹(mean_i z_i). Any k of the k+1 answers give the
missing one by subtraction: z_j ≈ k·z_p − Σ_{i≠j} z_i. ParM uses the same rule in logit space.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:  # the serving image has no torch: these functions need only numpy at run time
    import torch

CODING_MODES = ("none", "replication", "parm", "coded-invnet")
SHIPPED_KS = (2, 4, 10)  # the group sizes the shipped encoders and ParM models are trained and evaluated for

Array = TypeVar("Array", np.ndarray, "torch.Tensor")


class CodingError(ValueError):
    """Inputs to a decode do not fit together (shapes, k, missing index)."""


def decode_missing(parity: Array, available: Array, k: int) -> Array:
    """Reconstruct the missing member of a group: k·parity − Σ available.

    parity: (B, D) parity output (z_p, or ParM's logits p).
    available: (k-1, B, D) the outputs of the k-1 workers that answered.
    Returns (B, D).
    """
    if k < 2:
        raise CodingError(f"k must be >= 2, got {k}")
    if tuple(available.shape[1:]) != tuple(parity.shape) or available.shape[0] != k - 1:
        raise CodingError(
            f"expected available of shape ({k - 1}, {', '.join(map(str, parity.shape))}), "
            f"got {tuple(available.shape)}"
        )
    return k * parity - available.sum(0)


def decode_all(parity: Array, outputs: Array) -> Array:
    """Every member reconstructed as if it alone were missing: (k, B, D) → (k, B, D)."""
    k = outputs.shape[0]
    return k * parity[None] - (outputs.sum(0)[None] - outputs)
