"""Training-time augmentation and batching of the classifier's training images."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_shift_flip(x: torch.Tensor, max_shift: int, flip: bool) -> torch.Tensor:
    """x (B, C, H, W) with each image translated by up to ``max_shift`` pixels (zero fill) and, with
    ``flip``, mirrored left-right with probability 1/2."""
    b, c, h, w = x.shape
    if max_shift > 0:
        padded = F.pad(x, (max_shift,) * 4)  # (B, C, H + 2s, W + 2s)
        dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b, 1), device=x.device)
        rows = (dy + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
        cols = (dx + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
        batch = torch.arange(b, device=x.device)[:, None, None, None]  # (B, 1, 1, 1)
        x = padded[batch, torch.arange(c, device=x.device)[None, :, None, None], rows, cols]  # (B, C, H, W)
    if flip:
        x = torch.where(torch.rand(b, 1, 1, 1, device=x.device) < 0.5, x.flip(-1), x)
    return x


class ShuffledBatches:
    """Batch i of the current epoch's random order (augmented if asked); a new order is drawn at i == 0."""

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, batch_size: int, augment: tuple[int, bool] = (0, False)
    ) -> None:
        self.x, self.y, self.batch_size, self.augment = x, y, batch_size, augment
        self.steps = len(x) // batch_size
        self.order = torch.randperm(len(x), device=x.device)

    def __call__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i == 0:
            self.order = torch.randperm(len(self.x), device=self.x.device)
        idx = self.order[i * self.batch_size : (i + 1) * self.batch_size]
        return random_shift_flip(self.x[idx], *self.augment), self.y[idx]
