"""Command line of the training (``python -m coded_invnet.training``, ``make train``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from coded_invnet import training
from coded_invnet.checkpoint import ModelFileError
from coded_invnet.data import DATASETS, SHIPPED_DATASETS, DataError, load_dataset
from coded_invnet.models.classifier import ClassifierSpec
from coded_invnet.models.encoder import PARITY0_KERNEL, EncoderSpec
from coded_invnet.models.parm import PARM_ARCHS, SN_ARCH
from coded_invnet.models.parm_cnn import ParityCNNSpec
from coded_invnet.training.classifier import train_base
from coded_invnet.training.encoder import ENCODER_LOSSES, train_encoder, train_parity_encoders
from coded_invnet.training.jobs import run_all
from coded_invnet.training.loop import RunConfig, pick_device
from coded_invnet.training.parm import train_parity_network, train_parm
from coded_invnet.training.recipe import (
    DATASET_CODING_AWARE,
    DEFAULT_EPOCHS,
    PARM_ARCH,
    augment_for,
    base_spec,
    mixup_share_for,
)

MAX_K = 64


def widths(count: int) -> Callable[[str], tuple[int, ...]]:
    """An argparse type: ``count`` positive comma-separated integers, e.g. 64,128."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(v) for v in text.split(","))
        except ValueError:
            values = ()
        if len(values) != count or min(values) < 1:
            raise argparse.ArgumentTypeError(
                f"expected {count} positive comma-separated integers, got {text!r}"
            )
        return values

    return parse


def parser() -> argparse.ArgumentParser:
    doc = training.__doc__ or ""
    p = argparse.ArgumentParser(prog="python -m coded_invnet.training", description=doc.splitlines()[0])
    p.add_argument("what", choices=("base", "encoder", "parm", "all"))
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--datasets", default=",".join(SHIPPED_DATASETS), help="for 'all'")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--loss", default=ENCODER_LOSSES[0], choices=ENCODER_LOSSES)
    p.add_argument(
        "--parities", type=int, default=1, help="encoder: r parities (r ≥ 2: fine-tuned from encoder_k{k}.pt)"
    )
    p.add_argument(
        "--extra-kernel",
        type=int,
        help=f"encoder, r ≥ 2: parities 1..r-1's kernel (default: {PARITY0_KERNEL} where their rows are "
        f"weighted means, else {EncoderSpec.extra_kernel})",
    )
    p.add_argument("--no-mixup", action="store_true")
    p.add_argument("--parm-arch", default=PARM_ARCH, choices=PARM_ARCHS, help="parm: the parity network")
    cnn = ParityCNNSpec()
    p.add_argument(
        "--parm-widths",
        type=widths(3),
        help=f"parm, arch cnn: its three conv widths (default {','.join(map(str, cnn.widths))})",
    )
    p.add_argument("--parm-hidden", type=int, help=f"parm, arch cnn: its MLP width (default {cnn.hidden})")
    p.add_argument("--mixup-share", type=float, default=None, help="share of mixup batches (base)")
    p.add_argument(
        "--coding-aware",
        type=float,
        default=None,
        help="base: weight β of the decoding loss, trained jointly (default per data set)",
    )
    p.add_argument("--no-ablations", action="store_true", help="for 'all': skip ablation models")
    p.add_argument("--only", help="for 'all': run only this job (e.g. encoder_k10 or mnist/encoder_k10)")
    p.add_argument("--name", help="output file stem (default from the job)")
    p.add_argument("--base", help="base classifier checkpoint (default models/<dataset>/classifier.pt)")
    p.add_argument(
        "--init",
        help="encoder with r ≥ 2, parm: start from this model file (default: encoder_k{k}.pt; parm: fresh)",
    )
    shipped = ClassifierSpec()
    p.add_argument("--coeff", type=float, help=f"spectral-norm coefficient of g (default {shipped.coeff})")
    p.add_argument(
        "--hidden",
        type=widths(2),
        help=f"g's branch widths (default {','.join(map(str, shipped.hidden))}), e.g. 64,128",
    )
    p.add_argument("--head-hidden", type=int, help=f"h's hidden width (default {shipped.head_hidden})")
    p.add_argument("--shift", type=int, help="max training shift in pixels (default per data set)")
    p.add_argument("--flip", action="store_true", help="also flip training images left-right")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--models-dir", default="models")
    p.add_argument("--checkpoints-dir", default="checkpoints")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    return p


def _train_base(args: argparse.Namespace, cfg: RunConfig) -> None:
    name = args.name or ("classifier_nomixup" if args.no_mixup else "classifier")
    spec = base_spec(args.dataset, args.coeff, args.hidden, args.head_hidden)
    augment = augment_for(args.dataset)
    if args.shift is not None or args.flip:
        augment = (augment[0] if args.shift is None else args.shift, args.flip)
    beta = DATASET_CODING_AWARE.get(args.dataset, 0.0) if args.coding_aware is None else args.coding_aware
    mixup_share = mixup_share_for(args.dataset, not args.no_mixup)
    if args.mixup_share is not None and not args.no_mixup:
        mixup_share = args.mixup_share
    train_base(cfg, load_dataset(args.dataset), spec, mixup_share, name, augment, beta)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not 2 <= args.k <= MAX_K:
        print(f"error: --k must be between 2 and {MAX_K}, got {args.k}", file=sys.stderr)
        return 2
    datasets = tuple(d.strip() for d in args.datasets.split(",") if d.strip())
    for ds in (args.dataset, *datasets):
        if ds not in DATASETS:
            print(f"error: unknown data set {ds!r}; choose from {', '.join(DATASETS)}", file=sys.stderr)
            return 2
    cfg = RunConfig(
        dataset=args.dataset,
        models_dir=Path(args.models_dir),
        checkpoints_dir=Path(args.checkpoints_dir),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        train_limit=args.train_limit,
        device=pick_device(),
    )
    base = Path(args.base) if args.base else cfg.models_dir / args.dataset / "classifier.pt"
    name = args.name or f"{args.what}_k{args.k}" + (f"_r{args.parities}" if args.parities > 1 else "")
    try:
        if args.what == "all":
            run_all(cfg, datasets, not args.no_ablations, args.only, args.coeff)
        elif args.what == "base":
            _train_base(args, cfg)
        elif args.what == "encoder" and args.parities > 1:
            init = Path(args.init) if args.init else cfg.models_dir / args.dataset / f"encoder_k{args.k}.pt"
            train_parity_encoders(
                cfg, load_dataset(args.dataset), base, init, args.k, args.parities, name, args.extra_kernel
            )
        elif args.what == "encoder":
            train_encoder(cfg, load_dataset(args.dataset), base, args.k, args.loss, name)
        elif args.parm_arch == SN_ARCH:
            train_parm(cfg, load_dataset(args.dataset), base, args.k, name)
        else:
            init = Path(args.init) if args.init else None
            data = load_dataset(args.dataset)
            train_parity_network(
                cfg, data, base, args.k, name, args.parm_arch, init, args.parm_widths, args.parm_hidden
            )
    except (DataError, ModelFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
