"""The r-parity code: coefficients that decode every missing set, and decode_set in numpy and torch."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from coded_invnet import coding

CODES = [(k, r) for k in coding.SHIPPED_KS for r in range(1, coding.MAX_PARITIES + 1) if r <= k]


@pytest.mark.parametrize(("k", "r"), CODES)
def test_coefficients_decode_every_missing_set(k: int, r: int) -> None:
    """Row 0 is the mean; every other row is a weighted mean (positive, summing to 1) or a signed row of
    the mean's norm; every A[P, S] is invertible with a bounded error gain."""
    a = coding.parity_coefficients(k, r)
    assert a.shape == (r, k)
    np.testing.assert_allclose(a[0], np.full(k, 1 / k))
    for row in a[1:]:
        if (row > 0).all():
            assert row.sum() == pytest.approx(1.0, abs=1e-4)
        else:
            assert np.linalg.norm(row) == pytest.approx(1 / np.sqrt(k), rel=2e-3)
    condition, gain = coding.worst_case(a)
    assert gain >= k - 1e-9  # one parity alone multiplies its error by k at least
    assert condition < 250 and gain < 100 * k  # weighted-mean rows: larger gains, smaller latent errors


def test_decoding_from_every_parity_in_has_the_lowest_error_gain() -> None:
    a = coding.parity_coefficients(10, 2)
    assert coding.error_gain(a, [0], [0]) == pytest.approx(10.0)
    assert coding.error_gain(a, [1], [0]) == pytest.approx(1 / abs(a[1, 0]))  # 50: the smallest weight
    assert coding.error_gain(a, [0, 1], [0]) == pytest.approx(1 / np.linalg.norm(a[:, 0]))  # 9.8
    assert coding.error_gain(a, [0], [2, 7]) == float("inf")
    assert coding.decoding_rows([1, 0], [5]) == [0, 1]
    assert coding.decoding_rows([1], [5]) == [1]  # the only one in
    assert coding.decoding_rows([1], [2, 7]) == []  # too few
    for k, r in [(10, 2), (10, 3), (4, 3)]:
        a = coding.parity_coefficients(k, r)
        for s in range(1, r + 1):
            for missing in itertools.combinations(range(k), s):
                subsets = itertools.combinations(range(r), s)
                best_square = min(coding.error_gain(a, rows, missing) for rows in subsets)
                assert coding.error_gain(a, list(range(r)), missing) <= best_square + 1e-9


def test_least_squares_decode_multiplies_parity_noise_by_its_error_gain() -> None:
    """One member of k = 10 from both parities, each off by independent noise: the decoded latent is off
    by the gain 1/‖A[:, j]‖ times the noise (RMS over many coordinates), below either parity alone."""
    rng = np.random.default_rng(0)
    a = coding.parity_coefficients(10, 2)
    members = rng.normal(size=(10, 1, 20_000))  # (k, B, D)
    noise = 1e-3 * rng.normal(size=(2, 1, 20_000))
    parities = np.einsum("mk,kbd->mbd", a, members) + noise  # (r, B, D)
    for j in range(10):
        error = coding.decode_set(a, [0, 1], parities, members, [j])[0] - members[j]
        rms = float(np.sqrt(np.mean(error**2)))
        assert rms == pytest.approx(1e-3 * coding.error_gain(a, [0, 1], [j]), rel=0.03)
        alone = min(coding.error_gain(a, [m], [j]) for m in range(2))
        assert rms < 1e-3 * alone


def test_one_parity_code_is_the_mean_code() -> None:
    assert coding.worst_case(coding.parity_coefficients(10, 1)) == pytest.approx((1.0, 10.0))


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize(("k", "r"), [(4, 3), (10, 2), (10, 3)])
def test_decode_set_rebuilds_every_missing_set(lib: str, k: int, r: int) -> None:
    """From exact parities Σ_i A[m, i] z_i, every set of up to r missing members is rebuilt from every
    choice of parities of its size or more; the missing rows' contents do not matter."""
    rng = np.random.default_rng(0)
    a = coding.parity_coefficients(k, r)
    members = rng.normal(size=(k, 3, 5)).astype(np.float32)  # (k, B, D)
    parities = np.einsum("mk,kbd->mbd", a, members).astype(np.float32)  # (r, B, D)
    for s in range(1, r + 1):
        choices = [rows for p in range(s, r + 1) for rows in itertools.combinations(range(r), p)]
        for missing, rows in itertools.product(itertools.combinations(range(k), s), choices):
            garbled = members.copy()
            garbled[list(missing)] = 1e3
            given = parities[list(rows)]
            if lib == "torch":
                got = coding.decode_set(
                    a, rows, torch.from_numpy(given), torch.from_numpy(garbled), missing
                ).numpy()
            else:
                got = coding.decode_set(a, rows, given, garbled, missing)
            _, gain = coding.worst_case(a)
            np.testing.assert_allclose(got, members[list(missing)], atol=1e-6 * gain * 10)


def test_decode_set_with_one_parity_is_decode_missing() -> None:
    rng = np.random.default_rng(1)
    members = rng.normal(size=(4, 2, 3))
    parity = members.mean(0)
    got = coding.decode_set(coding.parity_coefficients(4), [0], parity[None], members, [2])[0]
    np.testing.assert_allclose(got, coding.decode_missing(parity, np.delete(members, 2, 0), 4))


def test_decode_set_and_coefficients_reject_bad_input() -> None:
    a = coding.parity_coefficients(10, 2)
    members, parities = np.zeros((10, 2, 3)), np.zeros((2, 2, 3))
    with pytest.raises(coding.CodingError, match="missing"):
        coding.decode_set(a, [0, 1], parities, members, [3, 3])
    with pytest.raises(coding.CodingError, match="missing"):
        coding.decode_set(a, [0, 1, 1], np.zeros((3, 2, 3)), members, [0, 1, 2])
    with pytest.raises(coding.CodingError, match="parities"):
        coding.decode_set(a, [0], parities[:1], members, [1, 2])
    with pytest.raises(coding.CodingError, match="expected members"):
        coding.decode_set(a, [0, 1], parities, np.zeros((9, 2, 3)), [1, 2])
    with pytest.raises(coding.CodingError, match="r .parity workers."):
        coding.parity_coefficients(10, 4)
    with pytest.raises(coding.CodingError, match="no coefficients"):
        coding.parity_coefficients(7, 2)
