"""The ParM baseline's parity models (Kosaian et al., SOSP 2019)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from coded_invnet.data import Dataset
from coded_invnet.models.encoder import MeanEncoder
from coded_invnet.models.parm import ParityModel
from coded_invnet.training.groups import group_training
from coded_invnet.training.loop import RunConfig, epoch_loop, write_model
from coded_invnet.training.losses import decoded_agreement


def train_parm(cfg: RunConfig, data: Dataset, base_path: Path, k: int, name: str) -> Path:
    """ParM: a parity model P of the base architecture, fed the averaging encoder's output mean_i x_i,
    trained so that P(mean x) ≈ mean_i f(x_i) in logit space (MSE), decoded by subtraction. Initialised
    from the base model's weights."""
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
