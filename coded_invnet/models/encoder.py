"""Parity encoder (fusion network) F_k: k queries → one parity query x_p ≈ g⁻¹(mean_i g(x_i)).

x_p = mean_i x_i + correction, where the correction is decoded from the *average* of features that one
shared, cheap branch computes on each image (at half resolution, after an invertible squeeze). Averaging
makes F permutation-invariant, and only the per-image branch scales with k, so F_k costs less than one
worker query per group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from coded_invnet.models.spec import JsonSpec


@dataclass(frozen=True)
class EncoderSpec(JsonSpec):
    image_shape: tuple[int, int, int] = (1, 28, 28)
    k: int = 10
    branch_width: int = 32
    fuse_width: int = 32


class FusionEncoder(nn.Module):
    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        assert spec.k >= 2, f"k must be >= 2, got {spec.k}"
        self.spec = spec
        c = spec.image_shape[0] * 4  # channels after the squeeze
        self.branch = nn.Sequential(nn.Conv2d(c, spec.branch_width, 3, padding=1), nn.ELU())
        correction = nn.Conv2d(spec.fuse_width, c, 3, padding=1)
        with torch.no_grad():  # start exactly at the pixel mean
            correction.weight.zero_()
            assert correction.bias is not None
            correction.bias.zero_()
        self.fuse = nn.Sequential(
            nn.Conv2d(spec.branch_width + c, spec.fuse_width, 3, padding=1), nn.ELU(), correction
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, k, C, H, W) → parity (B, C, H, W)."""
        b, k = x.shape[:2]
        assert k == self.spec.k and tuple(x.shape[2:]) == self.spec.image_shape, (
            f"expected (B, {self.spec.k}, {', '.join(map(str, self.spec.image_shape))}), got {tuple(x.shape)}"
        )
        s = F.pixel_unshuffle(x.flatten(0, 1), 2)  # (B·k, 4C, H/2, W/2)
        feats = self.branch(s).unflatten(0, (b, k)).mean(1)  # (B, width, H/2, W/2)
        mean = s.unflatten(0, (b, k)).mean(1)  # (B, 4C, H/2, W/2)
        return F.pixel_shuffle(mean + self.fuse(torch.cat([feats, mean], 1)), 2)


class MeanEncoder(nn.Module):
    """ParM's averaging encoder (and the no-learning baseline): x_p = mean_i x_i."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(1)
