"""`make demo`: serve MNIST with Coded-InvNet (k=10), SIGKILL a data worker midway, report what happened.

    python -m coded_invnet.demo [--model-dir models/mnist] [--k 10] [--limit 10000]

Starts the system locally (coded_invnet.launcher), streams the MNIST test set through the client SDK
(one query per request, a bounded window in flight), SIGKILLs data worker `--victim` once `--kill-at` of
the queries are answered, then prints and writes (results/demo.json) sent / answered / lost /
reconstructed counts, accuracy overall and of the reconstructed answers, and latency percentiles.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from coded_invnet.client import Client
from coded_invnet.data import load_dataset
from coded_invnet.launcher import launch


def summarize(labels: np.ndarray, answers: dict[int, tuple[int, bool, float]], sent: int) -> dict[str, Any]:
    """answers: query index → (predicted label, reconstructed, latency ms)."""
    index = np.array(sorted(answers), dtype=np.int64)
    predicted = np.array([answers[i][0] for i in index], dtype=np.int64)
    rebuilt = np.array([answers[i][1] for i in index], dtype=bool)
    latency = np.array([answers[i][2] for i in index], dtype=np.float64)
    correct = predicted == labels[index] if len(index) else np.zeros(0, dtype=bool)

    def pct(q: float) -> float:
        return round(float(np.percentile(latency, q)), 3) if len(latency) else float("nan")

    return {
        "sent": sent,
        "answered": len(index),
        "lost": sent - len(index),
        "reconstructed": int(rebuilt.sum()),
        "accuracy": round(float(correct.mean()), 4) if len(index) else float("nan"),
        "reconstructed_accuracy": round(float(correct[rebuilt].mean()), 4) if rebuilt.any() else None,
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "p999_ms": pct(99.9),
    }


def print_table(report: dict[str, Any]) -> None:
    rows = [
        ("queries sent", report["sent"]),
        ("answered", report["answered"]),
        ("lost", report["lost"]),
        ("reconstructed", report["reconstructed"]),
        ("accuracy (all answers)", report["accuracy"]),
        ("accuracy (reconstructed)", report["reconstructed_accuracy"]),
        ("latency p50 / p99 / p99.9 (ms)", f"{report['p50_ms']} / {report['p99_ms']} / {report['p999_ms']}"),
    ]
    print()
    for name, value in rows:
        print(f"  {name:32s} {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coded_invnet.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="models/mnist")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--mode", default="coded-invnet")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--limit", type=int, default=0, help="queries to send (0: the whole test set)")
    parser.add_argument("--window", type=int, default=64, help="unanswered requests at a time")
    parser.add_argument("--victim", type=int, default=3, help="data worker to SIGKILL")
    parser.add_argument("--kill-at", type=float, default=0.5, help="fraction answered before the kill")
    parser.add_argument("--out", default="results/demo.json")
    parser.add_argument("--log-dir", default="results/logs/demo")
    args = parser.parse_args(argv)
    if not Path(args.model_dir, "worker.onnx").is_file():
        print(f"error: no models in {args.model_dir} (run `make train export`)", file=sys.stderr)
        return 2

    test = load_dataset(args.dataset).test
    if args.limit:
        test = test.take(args.limit)
    sent = len(test)
    answers: dict[int, tuple[int, bool, float]] = {}
    errors: dict[str, int] = {}
    print(
        f"starting {args.k} data workers + parity worker, encoder, decoder, frontend (mode {args.mode}) ..."
    )
    started = time.perf_counter()
    with launch(args.model_dir, args.mode, args.k, log_dir=args.log_dir) as system:
        print(f"all SERVING after {time.perf_counter() - started:.1f} s; streaming {sent} queries")
        victim = system.workers[args.victim % args.k]
        with Client(system.frontend.target, timeout_s=30) as client, tqdm(total=sent, unit="q") as bar:
            for result in client.stream(iter(test.images), window=args.window):
                if result.error is not None:
                    errors[result.error.status] = errors.get(result.error.status, 0) + 1
                else:
                    p = result.predictions[0]
                    answers[result.index] = (p.label, p.reconstructed, p.latency_ms)
                bar.update()
                if victim.alive() and len(answers) >= args.kill_at * sent:
                    victim.kill()
                    tqdm.write(f"SIGKILLed {victim.name} (pid {victim.pid}) after {len(answers)} answers")
    report = summarize(test.labels, answers, sent)
    report.update(
        {
            "errors": errors,
            "mode": args.mode,
            "k": args.k,
            "killed": victim.name,
            "command": "python -m coded_invnet.demo " + shlex.join(sys.argv[1:] if argv is None else argv),
        }
    )
    print_table(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}; everything shut down")
    return 0 if report["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
