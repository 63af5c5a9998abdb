"""Groups with r > 1 parities, in process, against a linear model and an exact linear encoder (parity m
is Σ_i A[m, i] x_i): any k of the k + r results give every answer exactly, in one decoder call."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from helpers import LinearBackends, run_queries, true_logits

from coded_invnet.coding import error_gain, parity_coefficients
from coded_invnet.serving.config import ServingConfig, load_config
from coded_invnet.serving.errors import ConfigError
from services.frontend.backends import check_targets
from services.frontend.group import BETTER_ROWS_FACTOR


def answers(backends: LinearBackends, n: int = 16, **cfg: object) -> tuple[np.ndarray, list, list]:
    images, results, reports = asyncio.run(run_queries(backends, n, k=4, max_batch=4, **cfg))
    np.testing.assert_allclose(
        np.stack([r.logits for r in results]), true_logits(images), rtol=1e-3, atol=1e-3
    )
    return images, results, reports


def test_two_dead_workers_of_a_group_are_decoded_together() -> None:
    backends = LinearBackends("coded-invnet", dead={1, 2}, parities=2)
    _, results, reports = answers(backends, straggler_timeout_ms=5000)
    assert sum(r.reconstructed for r in results) == 8  # the rows of the two dead workers' batches
    assert sum(r.reconstructed_batches for r in reports) == 2 * len(reports)
    assert sum(r.decoded_sets for r in reports) == len(reports)  # one decoder call per group
    assert not any(r.resent_batches for r in reports)


def test_a_dead_parity_worker_leaves_the_other_parity_to_decode() -> None:
    backends = LinearBackends("coded-invnet", dead={3}, parities=2, dead_parities={0})
    _, results, reports = answers(backends, straggler_timeout_ms=5000)
    assert sum(r.reconstructed for r in results) == 4
    assert not any(r.resent_batches for r in reports)


def test_a_missing_batch_waits_for_a_late_parity_only_when_it_cuts_the_error_much() -> None:
    """k = 4, r = 2: row 1 alone decodes member j with gain 1/|A[1, j]| (3.0 or 8.8), both rows with
    1/‖A[:, j]‖ (2.4 or 3.6). Parity 0 comes late: members it helps more than BETTER_ROWS_FACTOR = 2
    wait for it and are decoded from both; the others take row 1 at once."""
    backends = LinearBackends("coded-invnet", dead={1}, parities=2, parity_delays={0: 0.2})
    answers(backends, n=64, straggler_timeout_ms=5000)
    a = parity_coefficients(4, 2)
    assert backends.decoded, "the dead worker's batches were decoded"
    for missing, rows in backends.decoded:
        waits = error_gain(a, [1], missing) > BETTER_ROWS_FACTOR * error_gain(a, [0, 1], missing)
        assert rows == ([0, 1] if waits else [1]), (missing, rows)
    assert {tuple(rows) for _, rows in backends.decoded} == {(0, 1), (1,)}


def test_more_failures_than_parities_are_resent() -> None:
    """Two data batches and one of the two parities lost: one parity cannot decode two, so failed
    batches go to the next workers at once (the last one missing may then be decoded), long before the
    straggler deadline."""
    backends = LinearBackends("coded-invnet", dead={0, 1}, parities=2, dead_parities={1})
    start = time.monotonic()
    answers(backends, straggler_timeout_ms=5000)
    assert time.monotonic() - start < 2.0


def test_two_stragglers_are_decoded_without_waiting_for_them() -> None:
    backends = LinearBackends("coded-invnet", delays={0: 10.0, 3: 10.0}, parities=2)

    async def timed() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await run_queries(backends, 8, k=4, max_batch=2, straggler_timeout_ms=50)
        return loop.time() - start

    assert asyncio.run(timed()) < 1.0
    assert sorted(set(backends.cancelled)) == [0, 3]


def test_the_parities_setting_fails_fast_naming_itself() -> None:
    assert load_config("frontend", ["--parities", "2", "--k", "4"]).parities == 2
    with pytest.raises(ConfigError, match="CODED_PARITIES"):
        load_config("decoder", [], {"CODED_PARITIES": "4"})
    with pytest.raises(ConfigError, match="CODED_PARITIES=2.*ParM"):
        load_config("frontend", ["--parities", "2", "--mode", "parm", "--k", "4"])
    with pytest.raises(ConfigError, match="CODED_PARITIES=3 with CODED_K=2"):
        ServingConfig(k=2, parities=3)
    assert ServingConfig(service="encoder", k=4, parities=2).model_path().name == "encoder_k4_r2.onnx"
    assert ServingConfig(service="encoder", k=4).model_path().name == "encoder_k4.onnx"


def test_a_listed_pool_must_hold_k_plus_r_workers() -> None:
    coded = {"encoder": "e:1", "decoder": "d:1", "k": 4, "parities": 2}
    check_targets(ServingConfig(service="frontend", workers=tuple(f"w:{i}" for i in range(6)), **coded))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs 6 distinct"):
        check_targets(ServingConfig(service="frontend", workers=tuple(f"w:{i}" for i in range(5)), **coded))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="CODED_PARITY_WORKER"):
        check_targets(ServingConfig(service="frontend", workers=("w:1",), parity_worker="p:1", **coded))  # type: ignore[arg-type]
