"""A seconds-long `coded_invnet.tools.bench` run writes records with the issue's keys, the command, a plot."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import K

from coded_invnet.tools import bench

RECORD_KEYS = {"mode", "k", "fault", "p50_ms", "p99_ms", "p999_ms", "throughput_qps", "accuracy",
               "agreement", "reconstructed_agreement", "reconstructed_fraction", "extra_compute",
               "p99_ms_not_reconstructed", "p999_ms_not_reconstructed"}  # fmt: skip


def test_short_bench_writes_records_meta_and_plot(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "latency.json"
    bench.main(
        f"--model-dir {model_dir} --ks {K} --modes coded-invnet --faults none,straggler,kill --duration 1.5 "
        f"--rate 40 --out {out}".split()
    )
    records = json.loads(out.read_text())
    assert [(r["mode"], r["fault"]) for r in records] == [
        ("coded-invnet", "none"),
        ("coded-invnet", "straggler"),
        ("coded-invnet", "kill"),
    ]
    for record in records:
        assert RECORD_KEYS <= record.keys()
        assert record["lost"] == 0 and record["k"] == K
    # with no fault the answers are the base model's own (a reconstructed one may differ, rarely)
    assert records[0]["agreement"] >= 0.95, records[0]
    assert records[2]["reconstructed_fraction"] > 0  # the killed worker's batches were decoded
    assert records[2]["reconstructed_agreement"] is not None
    assert all(r["p999_ms_not_reconstructed"] > 0 for r in records)  # the answers straight from workers
    assert json.loads(out.with_suffix(".meta.json").read_text())["command"].startswith(
        "python -m coded_invnet.tools.bench"
    )
    assert out.with_suffix(".png").stat().st_size > 0


def test_short_bench_serving_measures_both_layouts_and_raw_onnxruntime(
    model_dir: Path, tmp_path: Path
) -> None:
    from coded_invnet.tools import bench_serving

    out = tmp_path / "serving.json"
    bench_serving.main(
        f"--model-dir {model_dir} --k {K} --duration 1 --rounds 1 --rate 40 --queries 400 --window 16 "
        f"--out {out} --log-dir {tmp_path / 'logs'}".split()
    )
    report = json.loads(out.read_text())
    assert report["command"].startswith("python -m coded_invnet.tools.bench_serving")
    assert {"load_average_before", "load_average_after", "raw_onnxruntime_best"} <= report.keys()
    for session in ("per-service", "shared"):
        layout = report[session]
        assert layout["open_loop coded-invnet"]["lost"] == 0
        saturated = layout["saturated coded-invnet"]
        assert saturated["failed_requests"] == 0 and saturated["answered"] == 400
        assert saturated["cpu_ms_per_image"]["all services"] > 0
        assert layout["open_loop none"]["cpu_ms_per_request"]["frontend"] > 0
    assert set(report["summary"]["met"]) == set(report["summary"]["targets"])


def test_profile_hops_gives_each_frame_to_the_innermost_named_hop() -> None:
    from coded_invnet.tools.profile_hops import FRONTEND_HOPS, MACHINERY, hop_shares

    def rect(name: str, y: int, x: int, w: int) -> str:
        return (
            f'<g><title>{name} (f.py:1) ({w} samples)</title><rect x="0%" y="{y}" fg:x="{x}" fg:w="{w}"/></g>'
        )

    svg = "".join(
        [
            rect("Runner.run", 0, 0, 10),  # 2 samples of its own: machinery
            rect("Batcher._run_group", 16, 0, 6),  # 2 of its own: the coding group
            rect("GrpcBackends._call", 32, 0, 4),  # 4: to the backends, though inside the group
            rect("InferenceServicer._infer", 16, 6, 2),  # 2: request in
        ]
    )
    shares, samples = hop_shares(svg, FRONTEND_HOPS)
    assert samples == 10
    assert shares[MACHINERY] == 20 and shares["coding group"] == 20
    assert shares["to the backends (Batch, stream write)"] == 40
    assert shares["request in (handler, checks, decode)"] == 20
