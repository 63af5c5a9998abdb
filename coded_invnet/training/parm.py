"""The ParM baseline's parity models (Kosaian et al., SOSP 2019)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from coded_invnet import coding
from coded_invnet.checkpoint import load_classifier, load_parm, read_torch_file, write_torch_file
from coded_invnet.data import Dataset
from coded_invnet.models.classifier import InvNetClassifier
from coded_invnet.models.encoder import MeanEncoder
from coded_invnet.models.invresnet import to_plain
from coded_invnet.models.parm import SN_ARCH, ParityModel, arch_of, parity_network, parity_spec
from coded_invnet.training.groups import group_training, sample_indices
from coded_invnet.training.loop import (
    RunConfig,
    epoch_loop,
    predict,
    tensors,
    train_split,
    val_split,
    write_model,
)
from coded_invnet.training.losses import decoded_agreement
from coded_invnet.training.recipe import PARM_ARCH, PARM_PATIENCE, PARM_VAL_GROUPS


def train_parm(cfg: RunConfig, data: Dataset, base_path: Path, k: int, name: str) -> Path:
    """ParM with the base's spectrally-normalised architecture (arch invnet-sn, parm_sn_k*.pt), fed the
    averaging encoder's output mean_i x_i, trained so that P(mean x) ≈ mean_i f(x_i) in logit space (MSE),
    decoded by subtraction. Initialised from the base model's weights."""
    torch.manual_seed(cfg.seed + 100 + k)
    run = group_training(cfg, data, base_path, k, sampling_seed=cfg.seed + 31 * k)
    base, bs = run.base, run.groups_per_step
    parity = ParityModel(base.spec).to(cfg.device)
    parity.net.load_state_dict(base.state_dict())
    average = MeanEncoder()

    def step(epoch: int, i: int) -> torch.Tensor:
        groups = run.sample()  # (B, k, C, H, W)
        with torch.no_grad():
            target = base(groups.flatten(0, 1))[0].reshape(bs, k, -1).mean(1)  # (B, classes)
        return F.mse_loss(parity(average(groups)), target)

    def validate() -> float:
        return decoded_agreement(base, run.val_groups, lambda g: parity(average(g)), latent=False)

    best, score, history = epoch_loop(name, cfg, parity, step, run.steps, validate)
    return write_model(
        cfg,
        name,
        "parm",
        best,
        spec=base.spec.to_json(),
        k=k,
        encoder="mean",
        val_recovery=score,
        history=history,
    )


def base_logits(
    cfg: RunConfig, base_path: Path, base: InvNetClassifier, splits: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The frozen base's logits (N, classes) of each split's images, cached under checkpoints/ and keyed
    by the base file's hash and the split sizes (a retrained base or another --train-limit recomputes)."""
    key = hashlib.sha256(base_path.read_bytes()).hexdigest() + str({n: len(x) for n, x in splits.items()})
    cache = cfg.checkpoints_dir / cfg.dataset / f"{base_path.stem}.logits.pt"
    if cache.is_file():
        saved = read_torch_file(cache)
        if saved.get("key") == key:
            return {name: saved[name].to(cfg.device) for name in splits}
    logits = {name: predict(base, x)[0] for name, x in splits.items()}
    write_torch_file(cache, {"key": key, **{name: v.cpu() for name, v in logits.items()}})
    return logits


def initial_parity_network(spec: dict[str, Any], base: InvNetClassifier) -> nn.Module:
    """A parity model of ``spec`` (parity_spec) to train: the base-architecture ones start from the base's
    weights."""
    arch = arch_of(spec)
    parity = parity_network(spec)
    if isinstance(parity, ParityModel):
        constrained = ParityModel(base.spec)
        constrained.net.load_state_dict(base.state_dict())
        if arch != SN_ARCH:  # the base's function (eval: its spectral norms as they are), now unbounded
            to_plain(constrained.eval().net.g)
        parity.load_state_dict(constrained.state_dict())
    return parity


@torch.no_grad()
def parity_scores(
    parity: nn.Module, images: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor
) -> tuple[float, float]:
    """(agreement with the base, true-label accuracy) of every member of ``groups`` (G, k) decoded from
    the parity model's output on the mean image, given the base ``logits`` of the others."""
    outputs = logits[groups].transpose(0, 1)  # (k, G, classes)
    parity_logits = torch.cat([parity(images[g].mean(1)) for g in groups.split(1000)])  # (G, classes)
    decoded = coding.decode_all(parity_logits, outputs).argmax(-1)  # (k, G)
    agreement = (decoded == outputs.argmax(-1)).float().mean().item()
    accuracy = (decoded == labels[groups].T).float().mean().item()
    return agreement, accuracy


def train_parity_network(
    cfg: RunConfig,
    data: Dataset,
    base_path: Path,
    k: int,
    name: str,
    arch: str = PARM_ARCH,
    init: Path | None = None,
    cnn_widths: tuple[int, int, int] | None = None,
    cnn_hidden: int | None = None,
) -> Path:
    """ParM with a parity network of ``arch`` (default the shipped CNN): P(mean_i x_i) ≈ mean_i f(x_i)
    in logit space (MSE, as ParM), on random groups of k training images with the base's logits cached;
    an epoch is one pass of batch_size groups a step over the training images. Early stopping on the
    validation agreement (PARM_PATIENCE epochs), at most cfg.epochs. ``init``: a parity model file of
    ``arch`` to continue from; ``cnn_widths``/``cnn_hidden``: a CNN of other sizes than the shipped one."""
    torch.manual_seed(cfg.seed + 100 + k)
    base = load_classifier(base_path).to(cfg.device).requires_grad_(False)
    x_train, _ = tensors(train_split(data, cfg), cfg.device)
    x_val, y_val = tensors(val_split(data, cfg), cfg.device)
    targets = base_logits(cfg, base_path, base, {"train": x_train, "val": x_val})
    spec = parity_spec(arch, base.spec, cnn_widths, cnn_hidden)
    parity = initial_parity_network(spec, base).to(cfg.device)
    if init is not None:
        parity.load_state_dict(load_parm(init).state_dict())
    gen = torch.Generator().manual_seed(cfg.seed + 31 * k)
    val_groups = sample_indices(len(x_val), k, PARM_VAL_GROUPS, torch.Generator().manual_seed(cfg.seed))
    val_groups = val_groups.to(cfg.device)

    def step(epoch: int, i: int) -> torch.Tensor:
        idx = sample_indices(len(x_train), k, cfg.batch_size, gen).to(cfg.device)  # (B, k)
        return F.mse_loss(parity(x_train[idx].mean(1)), targets["train"][idx].mean(1))

    def validate() -> float:
        return parity_scores(parity, x_val, targets["val"], y_val, val_groups)[0]

    steps = max(1, len(x_train) // cfg.batch_size)
    best, score, history = epoch_loop(name, cfg, parity, step, steps, validate, patience=PARM_PATIENCE)
    parity.load_state_dict(best)
    parity.eval()
    accuracy = parity_scores(parity, x_val, targets["val"], y_val, val_groups)[1]
    return write_model(
        cfg,
        name,
        "parm",
        best,
        spec=spec,
        k=k,
        encoder="mean",
        val_recovery=score,
        val_degraded_accuracy=accuracy,
        history=history,
    )
