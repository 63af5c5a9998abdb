"""ParM parity model (Kosaian et al., SOSP 2019): same architecture as the base classifier, applied to
the averaging encoder's output (models.encoder.MeanEncoder); trained so its logits ≈ the mean of the k
base logits."""

from __future__ import annotations

import torch
from torch import nn

from coded_invnet.models.classifier import ClassifierSpec, InvNetClassifier


class ParityModel(nn.Module):
    def __init__(self, spec: ClassifierSpec) -> None:
        super().__init__()
        self.net = InvNetClassifier(spec)

    def forward(self, x_parity: torch.Tensor) -> torch.Tensor:
        """x_parity (B, C, H, W) → parity logits (B, classes)."""
        return self.net(x_parity)[0]
