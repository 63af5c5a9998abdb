"""The worker pool on the launcher: workers join, leave and crash under load, a second frontend is
killed, and no query is lost; ParM's parity batches run on pool workers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import model_dir_for, random_images, reference_logits

from coded_invnet.client import Client
from coded_invnet.tools import scaleout
from coded_invnet.tools.launcher import launch

K = 4  # a group of k + r = 5 workers: the pool of 10 holds two at once


def test_pool_grows_shrinks_and_survives_crashes_without_losing_a_query(tmp_path: Path) -> None:
    models = model_dir_for(K, tmp_path / "models")
    out = tmp_path / "pool.json"
    argv = ["pool", "--k", str(K), "--model-dir", str(models), "--duration", "14", "--rate", "20"]
    scaleout.main([*argv, "--out", str(out), "--log-dir", str(tmp_path / "logs")])
    report = json.loads(out.read_text())
    assert report["lost"] == 0 and report["sent"] > 0
    assert [e["event"] for e in report["events"]] == [
        "add",
        "remove (SIGTERM)",
        "kill (SIGKILL)",
        "kill frontend",
    ]
    counts = report["worker_batches"]["frontend"]
    added = report["events"][0]["services"]
    assert len(counts) == report["pool_size"] + 3 and all(counts[name] > 0 for name in added)
    assert min(counts.values()) > 0  # every worker got groups: they spread over the pool


def test_parm_parity_batches_run_on_pool_workers(tmp_path: Path) -> None:
    models = model_dir_for(K, tmp_path / "models")
    images = random_images(24)
    with launch(models, "parm", K, pool_size=K + 1, log_dir=tmp_path / "logs") as system:
        assert system.parity_worker is None and len(system.workers) == K + 1
        system.workers[2].kill()  # every group that used it is decoded from the parity of a pool worker
        with Client(system.frontend.target, timeout_s=20) as client:
            predictions = client.predict_batch(images)
    exact = [p.logits for p in predictions if not p.reconstructed]
    reference = reference_logits(models, images)
    rows = [i for i, p in enumerate(predictions) if not p.reconstructed]
    np.testing.assert_allclose(np.stack(exact), reference[rows], rtol=1e-4, atol=1e-4)
    assert len(predictions) == len(images)


@pytest.mark.parametrize("mode", ["none", "replication"])
def test_uncoded_modes_run_over_a_pool(tmp_path: Path, mode: str) -> None:
    models = model_dir_for(K, tmp_path / "models")
    images = random_images(16)
    with launch(models, mode, K, pool_size=K + 2, log_dir=tmp_path / "logs") as system:
        system.workers[0].kill()  # its batches go to the next worker of their group
        with Client(system.frontend.target, timeout_s=20) as client:
            predictions = client.predict_batch(images)
    assert not any(p.reconstructed for p in predictions)
    np.testing.assert_allclose(
        np.stack([p.logits for p in predictions]), reference_logits(models, images), rtol=1e-4, atol=1e-4
    )
