"""Head h: latent z (B, D) → logits (B, classes). Deliberately light (≤ 5% of a worker query's MACs):
the decoder runs only h, so decoding a missing prediction costs a fraction of an inference."""

from __future__ import annotations

import torch
from torch import nn


class Head(nn.Module):
    def __init__(self, latent_dim: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ELU(), nn.Linear(hidden, num_classes))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        assert z.shape[-1] == self.latent_dim, (
            f"expected latents of size {self.latent_dim}, got {z.shape[-1]}"
        )
        return self.net(z)
