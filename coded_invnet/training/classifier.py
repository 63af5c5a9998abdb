"""The base classifier g + h, trained from scratch with Manifold Mixup and, where the recipe asks for it,
the decoding loss (predictions rebuilt from a pixel-mean parity must be right too)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from coded_invnet.coding import SHIPPED_KS
from coded_invnet.data import Dataset
from coded_invnet.models.classifier import ClassifierSpec, InvNetClassifier
from coded_invnet.training.augment import ShuffledBatches
from coded_invnet.training.groups import fixed_val_groups
from coded_invnet.training.loop import (
    RunConfig,
    epoch_loop,
    predict,
    tensors,
    train_split,
    val_split,
    write_model,
)
from coded_invnet.training.losses import (
    classification_loss,
    decoded_agreement,
    pixel_mean_decoding_loss,
)
from coded_invnet.training.recipe import WEIGHT_AVERAGE_DECAY, augment_for


def coding_validation(
    model: InvNetClassifier, x_val: torch.Tensor, y_val: torch.Tensor, seed: int
) -> Callable[[], float]:
    """Validation score of a coding-aware classifier: mean of its accuracy and its worst pixel-mean
    recovery over SHIPPED_KS (the product needs both)."""
    val_groups = {k: fixed_val_groups(x_val, k, 200, seed) for k in SHIPPED_KS}

    def validate() -> float:
        accuracy = (predict(model, x_val)[0].argmax(1) == y_val).float().mean().item()
        recovery = min(
            decoded_agreement(model, groups, lambda b: model.g(b.mean(1)), latent=True)
            for groups in val_groups.values()
        )
        return (accuracy + recovery) / 2

    return validate


def train_base(
    cfg: RunConfig,
    data: Dataset,
    spec: ClassifierSpec,
    mixup_share: float,
    name: str,
    augment: tuple[int, bool] | None = None,
    coding_aware: float = 0.0,
) -> Path:
    """Train g + h from scratch. With ``coding_aware`` = β > 0, the loss also has β·pixel_mean_decoding_loss
    (k drawn from SHIPPED_KS per batch, β ramped up over the first two epochs), so that g learns
    decodable features from the start."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = InvNetClassifier(spec).to(cfg.device)
    x_train, y_train = tensors(train_split(data, cfg), cfg.device)
    x_val, y_val = tensors(val_split(data, cfg), cfg.device)
    augment = augment_for(cfg.dataset) if augment is None else augment
    batches = ShuffledBatches(x_train, y_train, cfg.batch_size, augment)

    def step(epoch: int, i: int) -> torch.Tensor:
        x, y = batches(i)
        loss, z = classification_loss(model, x, y, mixup_share, rng)
        if coding_aware > 0:
            ramp = min(1.0, (epoch * batches.steps + i) / (2 * batches.steps))
            k = int(rng.choice(SHIPPED_KS))
            loss = loss + coding_aware * ramp * pixel_mean_decoding_loss(model, x, z, y, k)
        return loss

    def accuracy() -> float:
        return (predict(model, x_val)[0].argmax(1) == y_val).float().mean().item()

    validate = coding_validation(model, x_val, y_val, cfg.seed) if coding_aware > 0 else accuracy
    best, score, history = epoch_loop(
        name, cfg, model, step, batches.steps, validate, ema_decay=WEIGHT_AVERAGE_DECAY
    )
    return write_model(
        cfg,
        name,
        "classifier",
        best,
        spec=spec.to_json(),
        mixup=mixup_share,
        augment=augment,
        coding_aware=coding_aware,
        **({"val_score": score} if coding_aware > 0 else {"val_accuracy": score}),
        history=history,
    )
