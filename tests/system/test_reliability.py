"""A seconds-long `make reliability` run: its report has a record per fault with the issue's fields."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import K

from coded_invnet.tools import reliability

FIELDS = {"fault", "sent", "answered", "lost", "errors", "reconstructed", "reconstructed_accuracy", "p999_ms"}


def test_short_reliability_run_loses_nothing_and_writes_every_field(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "reliability.json"
    faults = ["none", "kill data worker", "SIGSTOP encoder 5 s", "malformed flood"]
    reliability.main(
        ["--model-dir", str(model_dir), "--k", str(K), "--phase", "6", "--rate", "30", "--out", str(out)]
        + ["--only", *faults]
    )
    report = json.loads(out.read_text())
    assert [p["fault"] for p in report["phases"]] == faults
    for phase in report["phases"]:
        assert FIELDS <= phase.keys() and "peak_frontend_rss_mb" in phase
        assert phase["sent"] > 0 and phase["lost"] == 0, phase
    flood = report["phases"][-1]
    assert flood["malformed_sent"] > 0 and "OK" not in flood["malformed_codes"]
    assert report["command"].startswith("python -m coded_invnet.tools.reliability")
    table = reliability.markdown_table(report)
    assert table.count("\n") == len(faults) + 1
