"""Coding math shared by training, evaluation and the decoder service (numpy and torch alike).

A coding group holds k data queries x_1..x_k and r parity queries. Workers return z_i = g(x_i); parity
worker m returns z_p^(m) = g(x_p^(m)) with x_p^(m) ≈ g⁻¹(Σ_i a_{m,i} z_i), A = (a_{m,i}) the r × k
coefficient matrix of `parity_coefficients`, whose first row is 1/k (the mean, the one-parity code).
Any k of the k + r answers give the missing members S (|S| ≤ r) from the parities P in (|P| ≥ |S|):
A[P, S] ẑ_S = z_P − Σ_{i∉S} A[P, i] z_i, solved in the least-squares sense when |P| > |S|. With one
parity that is z_j = k·z_p − Σ_{i≠j} z_i. ParM uses the one-parity rule in logit space.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:  # the serving image has no torch: these functions need only numpy at run time
    import torch

CODING_MODES = ("none", "replication", "parm", "coded-invnet")
SHIPPED_KS = (2, 4, 10)  # the group sizes the shipped encoders and ParM models are trained and evaluated for
MAX_PARITIES = 3
SHIPPED_PARITY_CODES = ((10, 2), (4, 2), (10, 3), (4, 3))  # (k, r ≥ 2) of the shipped r-parity encoders

# Rows 2..r of A, scaled by k (row 1 is all ones: the mean); every square submatrix A[P, S] with
# |P| = |S| ≤ r is invertible. Decoding multiplies a parity's latent error by the error gain
# ‖A[P, S]⁻¹‖₂ (k for one parity). At k = 10 the rows are weighted means (positive weights summing to
# 1): their gains are larger than signed rows' (worst pair 158 against 52.5 at r = 2), but the encoder
# meets a weighted mean of latents far more closely than a signed combination, and the decoded error is
# gain × latent error (docs/RESULTS.md). r = 2 spreads the weights evenly over 0.02..0.18; r = 3's were
# found by a random search for the lowest mean gain of two and three missing. The k = 4 rows are signed,
# of the first row's norm, chosen by a numerical search (Nelder-Mead) for the lowest worst gain.
_EXTRA_ROWS: dict[tuple[int, int], tuple[tuple[float, ...], ...]] = {
    (2, 2): ((1.0, -1.0),),
    (4, 2): ((1.339, -1.339, -0.455, 0.455),),
    (4, 3): ((-0.38, 0.588, 1.33, -1.319), (1.349, -0.529, 0.597, -1.242)),
    (10, 2): ((0.2, 0.3778, 0.5556, 0.7333, 0.9111, 1.0889, 1.2667, 1.4444, 1.6222, 1.8),),
    (10, 3): (
        (0.1655, 0.3965, 0.2006, 0.7856, 1.1365, 1.4456, 1.0968, 2.0346, 1.845, 0.8933),
        (0.0207, 0.1447, 0.2782, 0.1748, 0.338, 1.3039, 1.6688, 1.3375, 2.2607, 2.4727),
    ),
}

Array = TypeVar("Array", np.ndarray, "torch.Tensor")


class CodingError(ValueError):
    """Inputs to a decode do not fit together (shapes, k, missing index)."""


def parity_coefficients(k: int, r: int = 1) -> np.ndarray:
    """The (r, k) coefficient matrix A: parity m encodes Σ_i A[m, i] g(x_i). Row 0 is 1/k."""
    if k < 2:
        raise CodingError(f"k must be >= 2, got {k}")
    if not 1 <= r <= min(MAX_PARITIES, k):
        raise CodingError(f"r (parity workers) must be in 1..{min(MAX_PARITIES, k)} for k={k}, got {r}")
    if r > 1 and (k, r) not in _EXTRA_ROWS:
        known = ", ".join(f"k={a} r={b}" for a, b in sorted(_EXTRA_ROWS))
        raise CodingError(f"no coefficients for k={k} with r={r} parities (there are: {known})")
    rows = np.ones((1, k)) if r == 1 else np.vstack([np.ones(k), np.array(_EXTRA_ROWS[k, r])])
    return rows / k


def is_weighted_mean(row: np.ndarray) -> bool:
    """Whether a row of A is a weighted mean (every coefficient positive; the rows sum to 1)."""
    return bool((row > 0).all())


def worst_case(coefficients: np.ndarray) -> tuple[float, float]:
    """(condition number, error gain): the largest κ(A[P, S]) and ‖A[P, S]⁻¹‖₂ over every set S of up
    to r missing members decoded from any |S| parities P."""
    r, k = coefficients.shape
    condition, gain = 1.0, 0.0
    for s in range(1, r + 1):
        for rows in itertools.combinations(range(r), s):
            for cols in itertools.combinations(range(k), s):
                sv = np.linalg.svd(coefficients[np.ix_(rows, cols)], compute_uv=False)
                condition, gain = max(condition, sv[0] / sv[-1]), max(gain, 1 / sv[-1])
    return float(condition), float(gain)


def error_gain(coefficients: np.ndarray, parity_rows: Sequence[int], missing: Sequence[int]) -> float:
    """‖A[P, S]⁺‖₂ = 1/σ_min(A[P, S]): how much decoding the members S from the parities P multiplies a
    parity's latent error by (inf when fewer parities than members, or A[P, S] has rank < |S|)."""
    if len(parity_rows) < len(missing):
        return float("inf")
    sv = np.linalg.svd(coefficients[np.ix_(list(parity_rows), list(missing))], compute_uv=False)
    return float(1 / sv[-1]) if sv[-1] > 1e-12 else float("inf")


def decoding_rows(available: Sequence[int], missing: Sequence[int]) -> list[int]:
    """The parity rows to decode the members S = ``missing`` from: every one of the ``available``, or []
    when fewer than |S|. Least squares over all of them never has a larger error gain than any |S| of
    them (an extra row can only raise σ_min); for one missing member of k = 10 with two parities it is
    1/‖A[:, j]‖, 4.9 to 9.8 against row 0's 10 and row 1's 5.6 to 50 alone."""
    rows = sorted(set(available))
    return rows if len(rows) >= len(missing) else []


def decode_missing(parity: Array, available: Array, k: int) -> Array:
    """Reconstruct the missing member of a one-parity group: k·parity − Σ available.

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
    """Every member of a one-parity group reconstructed as if it alone were missing: (k, B, D) → (k, B, D)."""
    k = outputs.shape[0]
    return k * parity[None] - (outputs.sum(0)[None] - outputs)


def decode_set(
    coefficients: np.ndarray,
    parity_rows: Sequence[int],
    parities: Array,
    members: Array,
    missing: Sequence[int],
) -> Array:
    """Reconstruct the missing members S of a group from |P| ≥ |S| of its parities (least squares when
    more parities than members are given).

    coefficients: (r, k) A. parity_rows: the indices P of the parities given.
    parities: (|P|, B, D) their outputs. members: (k, B, D) every member's output; the rows of the
    missing ones are ignored (any values). missing: S, distinct indices. Returns (|S|, B, D) in S's order.
    """
    r, k = coefficients.shape
    s, p = len(missing), len(parity_rows)
    if not 1 <= s <= r or len(set(missing)) != s or not all(0 <= j < k for j in missing):
        raise CodingError(f"missing {list(missing)}: need 1..{r} distinct members of 0..{k - 1}")
    if not s <= p <= r or len(set(parity_rows)) != p or not all(0 <= m < r for m in parity_rows):
        raise CodingError(f"parities {list(parity_rows)}: need at least {s} distinct of 0..{r - 1}")
    if members.shape[0] != k or tuple(parities.shape) != (p, *members.shape[1:]):
        raise CodingError(
            f"expected members ({k}, B, D) and parities ({p}, B, D), "
            f"got {tuple(members.shape)} and {tuple(parities.shape)}"
        )
    rows = coefficients[list(parity_rows)]  # (p, k)
    known = rows.copy()
    known[:, list(missing)] = 0.0
    solve = np.linalg.pinv(rows[:, list(missing)])  # (s, p): the inverse when p = s
    known_t, solve_t = _like(known, parities), _like(solve, parities)
    residual = parities - (known_t @ members.reshape(k, -1)).reshape(parities.shape)  # (p, B, D)
    return (solve_t @ residual.reshape(p, -1)).reshape(s, *members.shape[1:])


def _like(matrix: np.ndarray, array: Array) -> Array:
    """``matrix`` as the same kind of array (numpy or torch), dtype and device as ``array``."""
    if isinstance(array, np.ndarray):
        return matrix.astype(array.dtype)
    import torch

    return torch.as_tensor(matrix, dtype=array.dtype, device=array.device)
