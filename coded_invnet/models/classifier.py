"""f = h∘g: the base classifier served by every data worker (returns both logits and the latent z)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from coded_invnet.models.head import Head
from coded_invnet.models.invresnet import InvertibleResNet
from coded_invnet.models.spec import JsonSpec


@dataclass(frozen=True)
class ClassifierSpec(JsonSpec):
    """The defaults are the shipped model (models/*/classifier.pt, manifest.json's classifier_spec)."""

    image_shape: tuple[int, int, int] = (1, 28, 28)
    blocks_per_stage: tuple[int, int] = (4, 4)
    hidden: tuple[int, int] = (32, 64)  # residual-branch widths of g's two stages
    coeff: float = 0.9  # spectral-norm coefficient of every conv in g (both data sets)
    head_hidden: int = 256
    num_classes: int = 10


class InvNetClassifier(nn.Module):
    def __init__(self, spec: ClassifierSpec) -> None:
        super().__init__()
        self.spec = spec
        self.g = InvertibleResNet(spec.image_shape, spec.blocks_per_stage, spec.hidden, spec.coeff)
        self.h = Head(self.g.latent_dim, spec.head_hidden, spec.num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) → (logits (B, classes), z (B, D))."""
        z = self.g(x)
        return self.h(z), z

    def mixup_logits(self, x: torch.Tensor, perm: torch.Tensor, lam: float, mix_at: int) -> torch.Tensor:
        """Manifold Mixup forward: mix at input/block output ``mix_at`` (== num_mix_points: at z)."""
        if mix_at >= self.g.num_mix_points:
            z = self.g(x)
            return self.h(lam * z + (1 - lam) * z[perm])
        return self.h(self.g(x, mix_at=mix_at, mix=(perm, lam)))
