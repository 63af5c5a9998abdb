"""Invertible body g: an i-ResNet (Behrmann et al. 2019) with invertible down-sampling.

g: x (B, C, H, W) → z (B, 16C, H/4, W/4), same number of elements as x.
Each residual block is y = x + f(x) with Lip(f) < 1 (every conv spectrally normalised to ``coeff``),
so g is bi-Lipschitz: small latent errors map to small input errors and back, which is what keeps
k·(z_p − mean z) small at decode time. Inverse: x = y − f(x) by fixed-point iteration, contraction
rate Lip(f) ≤ coeff³.

Every invertible module here (Squeeze, ResidualBlock, InvertibleResNet) honours the Invertible
contract; tests/test_core_models.py checks the round trip of each.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

ROUND_TRIP_ATOL = 1e-4  # float32: max |x − inverse(forward(x))| with the default iteration count
# fixed-point steps of a block's inverse; the error shrinks by Lip(f) ≤ coeff³ a step (0.729⁶⁰ ≈ 6e-9 at 0.9)
INVERSE_ITERATIONS = 60


@runtime_checkable
class Invertible(Protocol):
    """A map with an inverse: ``y = forward(x)``, ``x = inverse(y)``, both one tensor in, one out.

    Invariant: ``torch.allclose(x, inverse(forward(x)), atol=ROUND_TRIP_ATOL)`` for every x the module is
    meant for (fixed-point inverses converge to that tolerance within their own iteration budget).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...

    def inverse(self, y: torch.Tensor) -> torch.Tensor: ...


class SpectralConv2d(nn.Module):
    """Conv2d whose operator norm (not the reshaped-matrix norm) is kept ≤ coeff.

    The norm is estimated by power iteration on the conv operator itself, one step per training forward,
    with a persistent input-shaped vector ``u`` (as in i-ResNet). The weight is divided by
    max(1, σ/coeff), so well-behaved weights are left untouched.
    """

    u: torch.Tensor

    def __init__(self, c_in: int, c_out: int, kernel: int, hw: tuple[int, int], coeff: float) -> None:
        super().__init__()
        assert 0 < coeff < 1, f"coeff must be in (0, 1), got {coeff}"
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)
        self.coeff = coeff
        self.padding = kernel // 2
        u = torch.randn(1, c_in, *hw)
        self.register_buffer("u", u / u.norm())

    def normalised_weight(self) -> torch.Tensor:
        w = self.conv.weight
        if self.training:
            with torch.no_grad():  # one power-iteration step per training forward
                v = F.conv2d(self.u, w, padding=self.padding)
                v = v / (v.norm() + 1e-12)
                u = F.conv_transpose2d(v, w, padding=self.padding)
                self.u.copy_(u / (u.norm() + 1e-12))
        # a copy: later forwards in the same step update u in place, autograd must keep this one
        sigma = F.conv2d(self.u.clone(), w, padding=self.padding).norm()
        return w / torch.clamp(sigma / self.coeff, min=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.normalised_weight(), self.conv.bias, padding=self.padding)

    def to_plain(self) -> nn.Conv2d:
        """A plain Conv2d with the normalised weight baked in (for export and fast inference)."""
        kernel = self.conv.kernel_size[0]
        plain = nn.Conv2d(self.conv.in_channels, self.conv.out_channels, kernel, padding=self.padding)
        with torch.no_grad():
            plain.weight.copy_(self.normalised_weight())
            assert self.conv.bias is not None and plain.bias is not None
            plain.bias.copy_(self.conv.bias)
        return plain


class ResidualBlock(nn.Module):
    """y = x + f(x), f = conv3x3 → ELU → conv1x1 → ELU → conv3x3, Lip(f) ≤ coeff³ < 1."""

    def __init__(
        self,
        channels: int,
        hidden: int,
        hw: tuple[int, int],
        coeff: float,
        inverse_iterations: int = INVERSE_ITERATIONS,
    ) -> None:
        super().__init__()
        self.inverse_iterations = inverse_iterations
        self.f = nn.Sequential(
            SpectralConv2d(channels, hidden, 3, hw, coeff),
            nn.ELU(),
            SpectralConv2d(hidden, hidden, 1, hw, coeff),
            nn.ELU(),
            SpectralConv2d(hidden, channels, 3, hw, coeff),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) → y (B, C, H, W)."""
        return x + self.f(x)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Fixed point of x = y − f(x): a fixed number of steps without gradient (nothing waits on the
        device between them), then one differentiable step, so gradients see one residual step."""
        with torch.no_grad():
            x = y
            for _ in range(self.inverse_iterations - 1):
                x = y - self.f(x)
        return y - self.f(x)


class Squeeze(nn.Module):
    """Invertible down-sampling: (B, C, H, W) → (B, 4C, H/2, W/2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) → (B, 4C, H/2, W/2), exact."""
        return F.pixel_unshuffle(x, 2)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """(B, 4C, H/2, W/2) → (B, C, H, W), exact."""
        return F.pixel_shuffle(y, 2)


class InvertibleResNet(nn.Module):
    """g: squeeze → blocks → squeeze → blocks. ``layers`` lists the mixing points for Manifold Mixup."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        blocks_per_stage: tuple[int, int],
        hidden: tuple[int, int],
        coeff: float,
        inverse_iterations: int = INVERSE_ITERATIONS,
    ) -> None:
        super().__init__()
        c, h, w = image_shape
        assert h % 4 == 0 and w % 4 == 0, f"H and W must be divisible by 4, got {h}x{w}"
        self.image_shape = image_shape
        self.latent_shape = (16 * c, h // 4, w // 4)
        layers: list[Squeeze | ResidualBlock] = []
        for stage, (n_blocks, width) in enumerate(zip(blocks_per_stage, hidden, strict=True)):
            scale = 2 ** (stage + 1)
            layers.append(Squeeze())
            hw = (h // scale, w // scale)
            channels = c * 4 ** (stage + 1)
            layers += [ResidualBlock(channels, width, hw, coeff, inverse_iterations) for _ in range(n_blocks)]
        self.layers = nn.ModuleList(layers)  # registers the parameters
        self.steps: tuple[Invertible, ...] = tuple(layers)  # the same modules, typed for inverse()

    @property
    def latent_dim(self) -> int:
        c, h, w = self.latent_shape
        return c * h * w

    def forward(
        self, x: torch.Tensor, mix_at: int = -1, mix: tuple[torch.Tensor, float] | None = None
    ) -> torch.Tensor:
        """x (B, C, H, W) → z (B, D).

        Manifold Mixup: with ``mix=(perm, λ)``, h ← λ·h + (1−λ)·h[perm] right before layer ``mix_at``.
        """
        assert x.shape[1:] == self.image_shape, (
            f"expected images of shape {self.image_shape}, got {tuple(x.shape[1:])}"
        )
        for i, layer in enumerate(self.layers):
            if i == mix_at and mix is not None:
                perm, lam = mix
                x = lam * x + (1 - lam) * x[perm]
            x = layer(x)
        return x.flatten(1)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, D) → x (B, C, H, W) by exact un-squeezing and fixed-point inversion of each block."""
        x = z.reshape(-1, *self.latent_shape)  # (B, 16C, H/4, W/4)
        for step in reversed(self.steps):
            x = step.inverse(x)
        return x

    @property
    def num_mix_points(self) -> int:
        return len(self.layers)


def to_plain(module: nn.Module) -> nn.Module:
    """Replace every SpectralConv2d in ``module`` (in place) by a plain Conv2d with the same function."""
    for name, child in module.named_children():
        if isinstance(child, SpectralConv2d):
            setattr(module, name, child.to_plain())
        else:
            to_plain(child)
    return module
