"""Headless Locust runs (steady load, one straggling worker) against a locally launched system write CSV."""

from __future__ import annotations

import csv
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from serving_models import K

from coded_invnet.tools.launcher import System, launch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def system(model_dir: Path) -> Iterator[System]:
    with launch(model_dir, "coded-invnet", K, fault_api=True) as running:  # the stragglers scenario
        yield running


@pytest.mark.parametrize("scenario", ["steady", "stragglers"])
def test_headless_locust_run_writes_csv_without_failures(
    system: System, scenario: str, tmp_path: Path
) -> None:
    locust = Path(sys.executable).with_name("locust")
    options = (
        f"--headless --users 4 --spawn-rate 4 --run-time 4s --only-summary --csv {tmp_path / 'run'} "
        f"--host {system.frontend.target} --scenario {scenario} --straggler-worker {system.workers[0].target}"
    )
    command = [str(locust), "-f", str(ROOT / "loadtest" / "locustfile.py"), *options.split()]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "run_stats.csv") as file:
        (total,) = [row for row in csv.DictReader(file) if row["Name"] == "Aggregated"]
    assert int(total["Request Count"]) > 0
    assert int(total["Failure Count"]) == 0
