"""Two parities end to end: k=4 data and r=2 parity batches per group on a pool of k + r real worker
processes; two workers killed (SIGKILL) at once under load, again and again, and no query is lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import parity_model_dir

from coded_invnet.tools import chaos

K, R = 4, 2


def test_two_workers_killed_at_once_lose_no_query(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("KUBECONFIG", chaos.IN_CLUSTER_ENV):
        monkeypatch.delenv(variable, raising=False)  # the local launcher, not a cluster
    models = parity_model_dir(K, R, tmp_path / "models")
    out = tmp_path / "chaos-r2.json"
    argv = f"--duration 12 --kill-every 4 --rate 25 --k {K} --parities {R} --at-once 2"
    chaos.main(
        [*argv.split(), "--model-dir", str(models), "--out", str(out), "--log-dir", str(tmp_path / "logs")]
    )
    report = json.loads(out.read_text())
    assert report["sent"] > 100
    assert report["lost"] == 0 and report["answered"] == report["sent"]
    assert report["killed"] >= 2 and report["at_once"] == 2
    assert report["reconstructed"] > 0  # the groups that lost two members were decoded from two parities
