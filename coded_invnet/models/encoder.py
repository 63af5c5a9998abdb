"""Parity encoder (fusion network) F_k: k queries → r parity queries x_p^(m) ≈ g⁻¹(Σ_i A[m, i] g(x_i)).

A is coding.parity_coefficients(k, r); row 0 is 1/k, so parity 0 is g⁻¹(mean_i g(x_i)). Parity m is
Σ_i A[m, i] x_i + correction_m, where the correction is decoded from the same combination of features
that one shared, cheap branch computes on each image (at half resolution, after an invertible squeeze).
Weighting by A makes each parity a fixed linear function of the branch outputs, and only the branch
scales with k, so F_k costs less than one worker query per group. With r = 1, forward returns
(B, C, H, W); with r ≥ 2, (B, r, C, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from coded_invnet.coding import is_weighted_mean, parity_coefficients
from coded_invnet.models.spec import JsonSpec

PARITY0_KERNEL = 3  # the hidden conv kernel of parity 0's fuse net


@dataclass(frozen=True)
class EncoderSpec(JsonSpec):
    image_shape: tuple[int, int, int] = (1, 28, 28)
    k: int = 10
    branch_width: int = 32
    fuse_width: int = 32
    parities: int = 1  # r: parity queries per group
    extra_kernel: int = 1  # parities 1..r-1: kernel of their fuse net's hidden conv (parity 0: 3)


def extra_kernel_for(k: int, r: int) -> int:
    """The hidden kernel of parities 1..r-1 of the (k, r) code: parity 0's when every one of them is a
    weighted mean (each starts from parity 0's correction, training.encoder.initial_parity_encoder),
    else EncoderSpec.extra_kernel."""
    rows = parity_coefficients(k, r)[1:]
    return PARITY0_KERNEL if all(is_weighted_mean(row) for row in rows) else EncoderSpec.extra_kernel


def _fuse_net(spec: EncoderSpec, c: int, kernel: int = PARITY0_KERNEL) -> nn.Sequential:
    """(combined features ⊕ combined pixels) → pixel correction; starts at zero (the pixel combination).
    Parities 1..r-1 use a ``spec.extra_kernel`` hidden conv (1×1: a ninth of the MACs of parity 0's 3×3)."""
    correction = nn.Conv2d(spec.fuse_width, c, 3, padding=1)
    with torch.no_grad():
        correction.weight.zero_()
        assert correction.bias is not None
        correction.bias.zero_()
    hidden = nn.Conv2d(spec.branch_width + c, spec.fuse_width, kernel, padding=kernel // 2)
    return nn.Sequential(hidden, nn.ELU(), correction)


class FusionEncoder(nn.Module):
    coefficients: torch.Tensor  # (r, k) A, a buffer

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        assert spec.k >= 2, f"k must be >= 2, got {spec.k}"
        self.spec = spec
        c = spec.image_shape[0] * 4  # channels after the squeeze
        self.branch = nn.Sequential(nn.Conv2d(c, spec.branch_width, 3, padding=1), nn.ELU())
        self.fuse = _fuse_net(spec, c)  # parity 0 (the only one with r = 1)
        self.extra = nn.ModuleList(
            _fuse_net(spec, c, spec.extra_kernel) for _ in range(spec.parities - 1)
        )  # parities 1..r-1
        a = torch.as_tensor(parity_coefficients(spec.k, spec.parities), dtype=torch.float32)
        self.register_buffer("coefficients", a, persistent=False)  # (r, k); not in the state dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, k, C, H, W) → parity (B, C, H, W) with r = 1, parities (B, r, C, H, W) with r ≥ 2."""
        b, k = x.shape[:2]
        assert k == self.spec.k and tuple(x.shape[2:]) == self.spec.image_shape, (
            f"expected (B, {self.spec.k}, {', '.join(map(str, self.spec.image_shape))}), got {tuple(x.shape)}"
        )
        s = F.pixel_unshuffle(x.flatten(0, 1), 2)  # (B·k, 4C, H/2, W/2)
        if self.spec.parities == 1:
            feats = self.branch(s).unflatten(0, (b, k)).mean(1)  # (B, width, H/2, W/2)
            mean = s.unflatten(0, (b, k)).mean(1)  # (B, 4C, H/2, W/2)
            return F.pixel_shuffle(mean + self.fuse(torch.cat([feats, mean], 1)), 2)
        a = self.coefficients  # (r, k)
        feats = torch.matmul(a, self.branch(s).unflatten(0, (b, k)).flatten(2))  # (B, r, width·H/2·W/2)
        mix = torch.matmul(a, s.unflatten(0, (b, k)).flatten(2))  # (B, r, 4C·H/2·W/2)
        fused = torch.cat([feats, mix], 2).unflatten(2, (-1, *s.shape[2:]))  # (B, r, width+4C, H/2, W/2)
        nets = [self.fuse, *self.extra]
        corr = torch.stack([net(fused[:, m]) for m, net in enumerate(nets)], 1)  # (B, r, 4C, H/2, W/2)
        out = mix.unflatten(2, s.shape[1:]) + corr  # (B, r, 4C, H/2, W/2)
        return F.pixel_shuffle(out.flatten(0, 1), 2).unflatten(0, (b, -1))  # (B, r, C, H, W)


class MeanEncoder(nn.Module):
    """ParM's averaging encoder (and the no-learning baseline): x_p = mean_i x_i."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(1)
