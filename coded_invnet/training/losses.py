"""Losses and validation measures shared by the classifier, the encoders and ParM."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from coded_invnet import coding
from coded_invnet.models.classifier import InvNetClassifier


def classification_loss(
    model: InvNetClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    mixup: float,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(loss, z): cross-entropy and the latents it computed, or on a share ``mixup`` of batches the
    Manifold Mixup loss (random layer, λ ~ Beta(1, 1)) and None."""
    if mixup <= 0 or rng.random() >= mixup:
        logits, z = model(x)  # (B, classes), (B, D)
        return F.cross_entropy(logits, y), z
    lam = float(rng.beta(1.0, 1.0))
    perm = torch.randperm(len(x), device=x.device)
    logits = model.mixup_logits(x, perm, lam, int(rng.integers(0, model.g.num_mix_points + 1)))
    return lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[perm]), None


def pixel_mean_decoding_loss(
    model: InvNetClassifier, x: torch.Tensor, z: torch.Tensor | None, y: torch.Tensor, k: int
) -> torch.Tensor:
    """Cross-entropy of h(ẑ_j), ẑ_j decoded from the pixel-mean parity of groups of k consecutive rows of
    the batch (x, labels y; z: its latents when a clean pass computed them), every member missing in turn."""
    z = model.g(x) if z is None else z  # (B, D)
    n = (len(x) // k) * k
    members = z[:n].unflatten(0, (-1, k)).transpose(0, 1)  # (k, G, D)
    decoded = coding.decode_all(model.g(x[:n].unflatten(0, (-1, k)).mean(1)), members)  # (k, G, D)
    target = y[:n].unflatten(0, (-1, k)).T  # (k, G)
    return F.cross_entropy(model.h(decoded).flatten(0, 1), target.flatten())


@torch.no_grad()
def decoded_agreement(
    base: InvNetClassifier,
    groups: torch.Tensor,
    parity_logits_or_z: Callable[[torch.Tensor], torch.Tensor],
    latent: bool,
) -> float:
    """Fraction of decoded predictions (every position missing in turn) agreeing with the base model."""
    b, k = groups.shape[:2]
    logits, z = base(groups.flatten(0, 1))  # (B·k, classes), (B·k, D)
    outputs = (z if latent else logits).reshape(b, k, -1).transpose(0, 1)  # (k, B, D)
    decoded = coding.decode_all(parity_logits_or_z(groups), outputs)  # (k, B, D)
    decoded_logits = base.h(decoded) if latent else decoded  # (k, B, classes)
    target = logits.reshape(b, k, -1).transpose(0, 1).argmax(-1)  # (k, B)
    return (decoded_logits.argmax(-1) == target).float().mean().item()
