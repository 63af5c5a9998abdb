"""A short local chaos run: load on the launched system while data workers are SIGKILLed and restarted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import K

from coded_invnet.tools import chaos


def test_local_chaos_run_loses_no_query(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("KUBECONFIG", chaos.IN_CLUSTER_ENV):
        monkeypatch.delenv(variable, raising=False)  # the local launcher, not a cluster
    out = tmp_path / "chaos.json"
    chaos.main(f"--duration 12 --kill-every 4 --rate 30 --k {K} --model-dir {model_dir} --out {out}".split())
    report = json.loads(out.read_text())
    assert {
        "sent",
        "answered",
        "lost",
        "killed",
        "reconstructed",
        "reconstructed_accuracy",
        "command",
    } <= set(report)
    assert report["sent"] > 100
    assert report["lost"] == 0 and report["answered"] == report["sent"]
    assert report["killed"] >= 1
