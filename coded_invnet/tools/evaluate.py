"""Evaluation of the committed models: accuracy with a missing worker, and the coding overhead.

    python -m coded_invnet.tools.evaluate --out results/accuracy.json       (make eval)

For each data set and k, the test set is cut into coding groups of k queries (fixed shuffle); each
position in turn is the missing one, so every test query is recovered exactly once.
- normal: the base model on the whole test set;
- degraded: accuracy (against true labels) of the predictions given for queries whose worker is missing;
- recovery: agreement of those with the base model's own prediction;
- "none" (no coding) has no answer for a missing worker and scores 0.
Every record has ``r`` (parity workers) and ``missing`` (members missing at once). With r parities
(encoder_k{k}_r{r}.pt) and s missing, every set of s members of every group (or a balanced sample of
them, see evaluated_sets) is missing in turn, decoded as the frontend decodes it with all r answered
(least squares over the r parities), so each test query is recovered equally often.
Also writes results/overhead.json (MACs and onnxruntime time of F_k, the worker, the head, ParM's parity
model; per (k, r) the worst condition number and error gain of the code), results/parm_fit.json (ParM's
decoding error against the base's logit margin), the plot docs/accuracy_vs_k.png, and the
tables between the markers in docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from coded_invnet import coding
from coded_invnet.checkpoint import (
    ModelFileError,
    load_checkpoint,
    load_classifier,
    load_encoder,
    load_parm,
    write_json,
)
from coded_invnet.coding import SHIPPED_KS
from coded_invnet.data import DATASETS, SHIPPED_DATASETS, DataError, Dataset, load_dataset
from coded_invnet.flops import count_macs
from coded_invnet.models.classifier import InvNetClassifier
from coded_invnet.models.encoder import FusionEncoder, MeanEncoder
from coded_invnet.models.parm import arch_of
from coded_invnet.tools.report import (
    OVERHEAD_BEGIN,
    OVERHEAD_END,
    PARITY_BEGIN,
    PARITY_END,
    TABLE_BEGIN,
    TABLE_END,
    accuracy_table,
    overhead_table,
    parity_table,
    plot,
    record_metrics,
    replace_block,
)

# method name → (base classifier file, how the parity is made)
CODED_METHODS: dict[str, tuple[str, str]] = {
    "coded-invnet": ("classifier", "encoder_k{k}"),
    "coded-invnet-no-mixup": ("classifier_nomixup", "encoder_nomixup_k{k}"),
    "coded-invnet-latent-loss-only": ("classifier", "encoder_latent_k{k}"),
    "coded-invnet-gan": ("classifier", "encoder_gan_k{k}"),
    "coded-invnet-pixel-mean": ("classifier", "mean"),
    "coded-invnet-oracle-inverse": ("classifier", "oracle"),
}

# r → the numbers of missing members the r-parity encoders are evaluated with
MISSING_EVALUATED: dict[int, tuple[int, ...]] = {2: (1, 2), 3: (1, 2, 3)}
MAX_MISSING_SETS = 45  # every missing set up to this many per group (k = 10: every pair) ...
MISSING_SET_ROUNDS = 4  # ... else k sets from each of this many random orders (k = 10, 3 missing: 40)
# what the record fields measure, written beside the records (results/accuracy.meta.json)
METRICS = {"degraded_accuracy": "true-label accuracy", "recovery_accuracy": "agreement with the base model"}


# ParM method name → its parity model file: the shipped (unconstrained CNN) one, and the base
# architecture with its spectral norm
PARM_METHODS = {"parm": "parm_k{k}", "parm-sn": "parm_sn_k{k}"}


def command_line() -> str:
    return "python -m coded_invnet.tools.evaluate " + " ".join(sys.argv[1:])


def groups_of(n: int, k: int, seed: int = 0) -> np.ndarray:
    """(n // k, k) indices: a fixed shuffle of the test set cut into coding groups."""
    order = np.random.default_rng(seed).permutation(n)
    return order[: (n // k) * k].reshape(-1, k)


@dataclass(frozen=True)
class BaseOutputs:
    """A base classifier and its outputs on every test image, computed once and shared by every method."""

    model: InvNetClassifier
    logits: torch.Tensor  # (N, classes)
    z: torch.Tensor  # (N, D)

    @property
    def preds(self) -> np.ndarray:
        return self.logits.argmax(1).numpy()


@torch.no_grad()
def base_outputs(model: InvNetClassifier, images: torch.Tensor, chunk: int = 1000) -> BaseOutputs:
    outs = [model(images[i : i + chunk]) for i in range(0, len(images), chunk)]
    return BaseOutputs(model, torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs]))


@torch.no_grad()
def decoded_predictions(
    base: BaseOutputs,
    images: torch.Tensor,
    groups: np.ndarray,
    parity_output: Callable[[torch.Tensor], torch.Tensor],
    latent: bool,
    chunk: int = 200,
) -> np.ndarray:
    """(n_groups, k) predicted classes for each member decoded as if it were the missing one."""
    preds = []
    outputs_of = base.z if latent else base.logits
    for start in range(0, len(groups), chunk):
        idx = torch.from_numpy(groups[start : start + chunk])  # (G, k)
        outputs = outputs_of[idx].transpose(0, 1)  # (k, G, D)
        decoded = coding.decode_all(parity_output(images[idx]), outputs)
        decoded_logits = base.model.h(decoded) if latent else decoded
        preds.append(decoded_logits.argmax(-1).transpose(0, 1).numpy())
    return np.concatenate(preds)


def evaluated_sets(k: int, r: int, missing: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """(S, P) pairs: every set S of ``missing`` members — or, past MAX_MISSING_SETS of them, the cyclic
    windows of MISSING_SET_ROUNDS random orders of the k members — each with the parities P the frontend
    decodes it from when all r are in (coding.decoding_rows). Either way each member is missing equally
    often."""
    subsets = list(itertools.combinations(range(k), missing))
    if len(subsets) > MAX_MISSING_SETS:
        rng = np.random.default_rng(seed)
        orders = [rng.permutation(k) for _ in range(MISSING_SET_ROUNDS)]
        subsets = [
            tuple(sorted(int(o[(t + i) % k]) for i in range(missing))) for o in orders for t in range(k)
        ]
    return [(list(s), coding.decoding_rows(range(r), s)) for s in subsets]


@torch.no_grad()
def decoded_set_predictions(
    base: BaseOutputs, images: torch.Tensor, groups: np.ndarray, encoder: FusionEncoder, missing: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(members (n,), predicted classes (n,), which of the evaluated_sets each came from (n,)) over the
    evaluated_sets of every group (coding.decode_set)."""
    k, r = encoder.spec.k, encoder.spec.parities
    a = coding.parity_coefficients(k, r)
    sets = evaluated_sets(k, r, missing)
    members, preds, set_ids = [], [], []
    for start in range(0, len(groups), 200):
        idx = torch.from_numpy(groups[start : start + 200])
        z = base.z[idx].transpose(0, 1)  # (k, G, D)
        parities = encoder(images[idx]).flatten(0, 1)  # (G·r, C, H, W)
        z_p = base.model.g(parities).unflatten(0, (len(idx), r)).transpose(0, 1)  # (r, G, D)
        for i, (s, p) in enumerate(sets):
            decoded = coding.decode_set(a, p, z_p[p], z, s)  # (missing, G, D)
            preds.append(base.model.h(decoded).argmax(-1).flatten().numpy())
            members.append(idx.T[s].flatten().numpy())
            set_ids.append(np.full(len(s) * len(idx), i))
    return np.concatenate(members), np.concatenate(preds), np.concatenate(set_ids)


def set_records(
    k: int, r: int, missing: int, labels: np.ndarray, base_preds: np.ndarray, decoded: tuple[np.ndarray, ...]
) -> list[dict[str, Any]]:
    """Per evaluated set S (decoded from P): its error gain, true-label accuracy and agreement with the
    base model: how the accuracy follows ‖A[P, S]⁻¹‖₂."""
    members, preds, set_ids = decoded
    a = coding.parity_coefficients(k, r)
    out = []
    for i, (s, p) in enumerate(evaluated_sets(k, r, missing)):
        chosen = set_ids == i
        out.append(
            {
                "k": k,
                "r": r,
                "missing": s,
                "parities": p,
                "error_gain": round(coding.error_gain(a, p, s), 2),
                "true_label_accuracy": round(float((preds[chosen] == labels[members[chosen]]).mean()), 4),
                "agreement": round(float((preds[chosen] == base_preds[members[chosen]]).mean()), 4),
                "decoded": int(chosen.sum()),
            }
        )
    return out


@torch.no_grad()
def parm_fit(
    base: BaseOutputs, images: torch.Tensor, groups: np.ndarray, parm: torch.nn.Module, chunk: int = 200
) -> dict[str, float]:
    """How far ParM's decoded logits are from the base's (every member missing in turn): the decoding
    error k·(P(mean x) − mean f(x)) against the base's own top-1 − top-2 logit margin, which an error
    must stay under (roughly) for the decoded prediction to agree."""
    errors, margins = [], []
    for start in range(0, len(groups), chunk):
        idx = torch.from_numpy(groups[start : start + chunk])  # (G, k)
        logits = base.logits[idx]  # (G, k, classes)
        error = idx.shape[1] * (parm(images[idx].mean(1)) - logits.mean(1))  # (G, classes), the same for all
        errors.append(error.norm(dim=-1))
        top2 = logits.topk(2, dim=-1).values  # (G, k, 2)
        margins.append((top2[..., 0] - top2[..., 1]).flatten())
    error_norm, margin = torch.cat(errors), torch.cat(margins)
    return {
        "decode_error_l2_median": round(error_norm.median().item(), 3),
        "base_margin_median": round(margin.median().item(), 3),
    }


def parity_for(
    base: InvNetClassifier, source: str, model_dir: Path, k: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    if source == "oracle":  # the exact parity g⁻¹(mean z): an upper bound no encoder can beat
        return lambda b: base.g(base.g.inverse(base.g(b.flatten(0, 1)).unflatten(0, b.shape[:2]).mean(1)))
    encoder: torch.nn.Module = MeanEncoder() if source == "mean" else load_encoder(model_dir / f"{source}.pt")
    return lambda b: base.g(encoder(b))


def parm_parity(parm: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    average = MeanEncoder()  # ParM's encoder
    return lambda groups: parm(average(groups))


def evaluate_dataset(
    data: Dataset,
    model_dir: Path,
    limit: int | None,
    fits: list[dict[str, Any]] | None = None,
    sets: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The accuracy records of every model found; ``fits`` collects ParM's parm_fit per k, ``sets`` the
    r-parity codes' set_records."""
    test = data.test.take(limit) if limit else data.test
    images, labels = torch.from_numpy(test.images), test.labels
    records: list[dict[str, Any]] = []
    bases: dict[str, BaseOutputs] = {}

    def base_named(name: str) -> BaseOutputs:
        if name not in bases:
            bases[name] = base_outputs(load_classifier(model_dir / f"{name}.pt"), images)
        return bases[name]

    def add(
        method: str,
        k: int,
        base_preds: np.ndarray,
        decoded: np.ndarray | None,
        groups: np.ndarray,
        r: int = 1,
        missing: int = 1,
    ) -> None:
        members = groups.reshape(-1)
        flat = decoded.reshape(-1) if decoded is not None else None
        records.append(
            {
                "dataset": data.name,
                "k": k,
                "method": method,
                "r": r,
                "missing": missing,
                "normal_accuracy": round(float((base_preds == labels).mean()), 4),
                "degraded_accuracy": round(float((flat == labels[members]).mean()), 4)
                if flat is not None
                else 0.0,
                "recovery_accuracy": round(float((flat == base_preds[members]).mean()), 4)
                if flat is not None
                else 0.0,
                "n_queries": int(len(members)),
            }
        )

    jobs = [(k, m) for k in SHIPPED_KS for m in ("none", *PARM_METHODS, *CODED_METHODS)]
    for k, method in tqdm(jobs, desc=f"evaluate {data.name}", leave=False):
        groups = groups_of(len(test), k)
        if method == "none":
            add(method, k, base_named("classifier").preds, None, groups)
            continue
        if method in PARM_METHODS:
            base = base_named("classifier")
            path = model_dir / f"{PARM_METHODS[method].format(k=k)}.pt"
            if not path.is_file():
                continue
            parm = load_parm(path)
            decoded = decoded_predictions(base, images, groups, parm_parity(parm), latent=False)
            add(method, k, base.preds, decoded, groups)
            if fits is not None:
                fit = parm_fit(base, images, groups, parm)
                fits.append({"dataset": data.name, "k": k, "method": method, **fit})
            continue
        base_name, source = CODED_METHODS[method]
        source = source.format(k=k)
        if not (model_dir / f"{base_name}.pt").is_file() or (
            source not in ("mean", "oracle") and not (model_dir / f"{source}.pt").is_file()
        ):
            continue  # an optional ablation that was not trained
        if source == "oracle" and k != 10:
            continue  # slow (fixed-point inversion); k=10 is the case that matters
        base = base_named(base_name)
        parity = parity_for(base.model, source, model_dir, k)
        add(method, k, base.preds, decoded_predictions(base, images, groups, parity, latent=True), groups)
    for path in sorted(model_dir.glob("encoder_k*_r*.pt")):  # the r-parity encoders
        encoder = load_encoder(path)
        k, r = encoder.spec.k, encoder.spec.parities
        base = base_named("classifier")
        for missing in MISSING_EVALUATED[r]:
            found = decoded_set_predictions(base, images, groups_of(len(test), k), encoder, missing)
            add("coded-invnet", k, base.preds, found[1], found[0], r, missing)
            if sets is not None:
                per_set = set_records(k, r, missing, labels, base.preds, found)
                sets += [{"dataset": data.name, **record} for record in per_set]
    return records


def measure_overhead(model_dir: Path, repeats: int = 20) -> dict[str, Any]:
    """MACs and single-thread onnxruntime time of one worker query, the head, and F_k per group."""
    import onnxruntime as ort

    base = load_classifier(model_dir / "classifier.pt")
    shape = base.spec.image_shape
    worker_macs = count_macs(base, torch.rand(1, *shape))
    head_macs = count_macs(base.h, torch.rand(1, base.g.latent_dim))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1

    def time_onnx(path: Path, x: np.ndarray) -> float:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        session.run(None, {name: x})
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            session.run(None, {name: x})
            best = min(best, time.perf_counter() - t0)
        return best * 1e6 / len(x)  # µs per item

    batch = 64
    worker_us = time_onnx(model_dir / "worker.onnx", np.random.rand(batch, *shape).astype(np.float32))
    head_us = time_onnx(model_dir / "head.onnx", np.random.rand(batch, base.g.latent_dim).astype(np.float32))
    per_k = []
    for k in SHIPPED_KS:
        path = model_dir / f"encoder_k{k}.pt"
        if not path.is_file():
            continue
        enc: FusionEncoder = load_encoder(path)
        enc_macs = count_macs(enc, torch.rand(1, k, *shape))
        enc_us = time_onnx(path.with_suffix(".onnx"), np.random.rand(batch, k, *shape).astype(np.float32))
        parm_path = model_dir / f"parm_k{k}.pt"
        parm = {}
        if parm_path.is_file() and parm_path.with_suffix(".onnx").is_file():
            parm_x = np.random.rand(batch, *shape).astype(np.float32)
            parm = {  # ParM's parity worker: one query of its parity model a group
                "parm_arch": arch_of(load_checkpoint(parm_path, "parm")["spec"]),
                "parm_macs_per_group": count_macs(load_parm(parm_path), torch.rand(1, *shape)),
                "parm_us_per_group": round(time_onnx(parm_path.with_suffix(".onnx"), parm_x), 1),
            }
        per_k.append(
            {
                "k": k,
                "encoder_macs_per_group": enc_macs,
                "encoder_in_worker_queries": round(enc_macs / worker_macs, 4),
                "encoder_us_per_group": round(enc_us, 1),
                "extra_compute_macs": round((worker_macs + enc_macs) / (k * worker_macs), 4),
                "extra_compute_measured": round((worker_us + enc_us) / (k * worker_us), 4),
                **parm,
            }
        )
    per_code = []
    for path in sorted(model_dir.glob("encoder_k*_r*.pt")):  # the r-parity encoders
        enc = load_encoder(path)
        k, r = enc.spec.k, enc.spec.parities
        enc_macs = count_macs(enc, torch.rand(1, k, *shape))
        enc_us = time_onnx(path.with_suffix(".onnx"), np.random.rand(batch, k, *shape).astype(np.float32))
        a = coding.parity_coefficients(k, r)
        condition, gain = coding.worst_case(a)
        used = {  # per number missing: the worst gain of the decode with all r in (decoding_rows)
            str(s): round(
                max(
                    coding.error_gain(a, coding.decoding_rows(range(r), cols), cols)
                    for cols in itertools.combinations(range(k), s)
                ),
                2,
            )
            for s in range(1, r + 1)
        }
        per_code.append(
            {
                "k": k,
                "r": r,
                "encoder_macs_per_group": enc_macs,
                "encoder_in_worker_queries": round(enc_macs / worker_macs, 4),
                "encoder_us_per_group": round(enc_us, 1),
                "extra_compute_macs": round((r * worker_macs + enc_macs) / (k * worker_macs), 4),
                "extra_compute_measured": round((r * worker_us + enc_us) / (k * worker_us), 4),
                "worst_condition_number": round(condition, 2),
                "worst_error_gain": round(gain, 2),
                "worst_error_gain_decoded": used,
            }
        )
    return {
        "dataset": model_dir.name,
        "worker_macs_per_query": worker_macs,
        "head_macs": head_macs,
        "head_fraction_of_worker": round(head_macs / worker_macs, 4),
        "worker_us_per_query": round(worker_us, 1),
        "head_us_per_query": round(head_us, 1),
        "onnxruntime_threads": 1,
        "batch": batch,
        "per_k": per_k,
        "per_code": per_code,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m coded_invnet.tools.evaluate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", default="results/accuracy.json")
    parser.add_argument("--overhead-out", default="results/overhead.json")
    parser.add_argument("--parm-fit-out", default="results/parm_fit.json")
    parser.add_argument("--parity-sets-out", default="results/parity_sets.json")
    parser.add_argument("--datasets", default=",".join(SHIPPED_DATASETS))
    parser.add_argument("--models-dir", default="models")
    parser.add_argument("--limit", type=int, default=None, help="evaluate on the first N test images only")
    parser.add_argument("--plot", default="docs/accuracy_vs_k.png")
    parser.add_argument("--results-md", default="docs/RESULTS.md", help="'' to leave the doc alone")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("CODED_EVAL_THREADS", "0")))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        print(f"error: unknown data set(s) {unknown}; choose from {', '.join(DATASETS)}", file=sys.stderr)
        return 2
    records: list[dict[str, Any]] = []
    overheads = []
    fits: list[dict[str, Any]] = []
    sets: list[dict[str, Any]] = []
    try:
        for ds in datasets:
            model_dir = Path(args.models_dir) / ds
            if not (model_dir / "classifier.pt").is_file():
                raise ModelFileError(f"{model_dir / 'classifier.pt'} not found (run `make train`)")
            records += evaluate_dataset(load_dataset(ds), model_dir, args.limit, fits, sets)
            overheads.append(measure_overhead(model_dir))
    except (DataError, ModelFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    command = command_line()
    write_json(args.out, records)
    meta = {"command": command, "n_records": len(records), "metrics": METRICS}
    write_json(Path(args.out).with_suffix(".meta.json"), meta)
    write_json(args.overhead_out, {"command": command, "datasets": overheads})
    write_json(args.parm_fit_out, {"command": command, "records": fits})
    write_json(args.parity_sets_out, {"command": command, "sets": sets})
    for ds in datasets:
        record_metrics(
            Path(args.models_dir) / ds / "manifest.json", [r for r in records if r["dataset"] == ds], command
        )
    plot(records, Path(args.plot))
    if args.results_md:
        md = Path(args.results_md)
        replace_block(md, TABLE_BEGIN, TABLE_END, accuracy_table(records), command)
        replace_block(md, OVERHEAD_BEGIN, OVERHEAD_END, overhead_table(overheads), command)
        replace_block(md, PARITY_BEGIN, PARITY_END, parity_table(records, overheads), command)
    print(accuracy_table(records))
    print()
    print(overhead_table(overheads))
    print()
    print(parity_table(records, overheads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
