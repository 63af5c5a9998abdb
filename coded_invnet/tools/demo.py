"""`make demo`: serve MNIST with Coded-InvNet (k=10), SIGKILL a data worker midway, report what happened.

    python -m coded_invnet.tools.demo [--model-dir models/mnist] [--k 10] [--limit 10000]

Starts the system locally (coded_invnet.tools.launcher), streams the MNIST test set through the client SDK
(one query per request, a bounded window in flight), SIGKILLs data worker `--victim` once `--kill-at` of
the queries are answered, then prints and writes (results/demo.json) sent / answered / lost /
reconstructed counts, true-label accuracy and agreement with the base model (the answer worker.onnx itself
gives that image with no fault), overall and of the reconstructed answers, and latency percentiles.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from coded_invnet.client import Client, StreamResult
from coded_invnet.data import load_dataset
from coded_invnet.tools.base_model import base_predictions
from coded_invnet.tools.launcher import launch
from coded_invnet.tools.openloop import Outcome, summarize


def outcome(result: StreamResult, label: int, base: int) -> Outcome:
    if result.error is not None:
        return Outcome(0.0, 0.0, result.error.status, -1, False, label, base)
    p = result.predictions[0]
    return Outcome(0.0, p.latency_ms, "OK", p.label, p.reconstructed, label, base)


def print_table(report: dict[str, Any]) -> None:
    rows = [
        ("queries sent", report["sent"]),
        ("answered", report["answered"]),
        ("lost", report["lost"]),
        ("reconstructed", report["reconstructed"]),
        ("true-label accuracy (all answers)", report["accuracy"]),
        ("agreement with the base model (all)", report["agreement"]),
        ("true-label accuracy (reconstructed)", report["reconstructed_accuracy"]),
        ("agreement with the base model (reconstructed)", report["reconstructed_agreement"]),
        ("latency p50 / p99 / p99.9 (ms)", f"{report['p50_ms']} / {report['p99_ms']} / {report['p999_ms']}"),
        ("throughput (queries/s)", report["throughput_qps"]),
    ]
    print()
    for name, value in rows:
        print(f"  {name:46s} {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m coded_invnet.tools.demo", description=__doc__.splitlines()[0]
    )
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
    base = base_predictions(args.model_dir, test.images)
    outcomes: dict[int, Outcome] = {}
    print(
        f"starting {args.k} data workers + parity worker, encoder, decoder, frontend (mode {args.mode}) ..."
    )
    started = time.perf_counter()
    with launch(args.model_dir, args.mode, args.k, log_dir=args.log_dir) as system:
        print(f"all SERVING after {time.perf_counter() - started:.1f} s; streaming {sent} queries")
        streaming_started = time.perf_counter()
        victim = system.workers[args.victim % args.k]
        with Client(system.frontend.target, timeout_s=30) as client, tqdm(total=sent, unit="q") as bar:
            for result in client.stream(iter(test.images), window=args.window):
                index = result.index
                outcomes[index] = outcome(result, int(test.labels[index]), int(base[index]))
                bar.update()
                if victim.alive() and len(outcomes) >= args.kill_at * sent:
                    victim.kill()
                    tqdm.write(f"SIGKILLed {victim.name} (pid {victim.pid}) after {len(outcomes)} answers")
        duration_s = time.perf_counter() - streaming_started
    never_answered = [Outcome(0.0, 0.0, "LOST", -1, False, -1)] * (sent - len(outcomes))
    report: dict[str, Any] = dict(summarize([*outcomes.values(), *never_answered], duration_s))
    report.update(
        {
            "errors": dict(Counter(o.code for o in outcomes.values() if o.code != "OK")),
            "mode": args.mode,
            "k": args.k,
            "killed": victim.name,
            "command": "python -m coded_invnet.tools.demo "
            + shlex.join(sys.argv[1:] if argv is None else argv),
        }
    )
    print_table(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}; everything shut down")
    return 0 if report["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
