"""What the encoders and ParM are trained on: a frozen base classifier and groups of k training images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from coded_invnet.checkpoint import load_classifier
from coded_invnet.data import Dataset
from coded_invnet.models.classifier import InvNetClassifier
from coded_invnet.training.loop import RunConfig, tensors, train_split, val_split


def sample_indices(n: int, k: int, batch: int, gen: torch.Generator) -> torch.Tensor:
    """(batch, k) indices into n items drawn at random (on the CPU, so ``gen`` decides them anywhere)."""
    return torch.randint(0, n, (batch, k), generator=gen, device="cpu")


def sample_groups(x: torch.Tensor, k: int, batch: int, gen: torch.Generator) -> torch.Tensor:
    """(batch, k, C, H, W) groups of k images of x (N, C, H, W) drawn at random."""
    return x[sample_indices(len(x), k, batch, gen).to(x.device)]


def fixed_val_groups(x: torch.Tensor, k: int, count: int, seed: int) -> torch.Tensor:
    """The same ``count`` validation groups (count, k, C, H, W) at every epoch."""
    return sample_groups(x, k, count, torch.Generator().manual_seed(seed))


@dataclass(frozen=True)
class GroupTraining:
    base: InvNetClassifier  # frozen: only the parity side learns
    k: int
    x_train: torch.Tensor  # (N, C, H, W)
    val_groups: torch.Tensor  # (G, k, C, H, W), the same at every epoch
    groups_per_step: int
    steps: int  # per epoch: about one pass over the training images
    gen: torch.Generator

    def sample(self) -> torch.Tensor:
        """(groups_per_step, k, C, H, W) groups of training images drawn at random."""
        return sample_groups(self.x_train, self.k, self.groups_per_step, self.gen)


def group_training(
    cfg: RunConfig, data: Dataset, base_path: Path, k: int, sampling_seed: int
) -> GroupTraining:
    """The frozen classifier at ``base_path``, the training images and fixed validation groups of k."""
    base = load_classifier(base_path).to(cfg.device).requires_grad_(False)
    x_train, _ = tensors(train_split(data, cfg), cfg.device)
    x_val, _ = tensors(val_split(data, cfg), cfg.device)
    val_groups = fixed_val_groups(x_val, k, 400 if cfg.train_limit else 1000, cfg.seed)
    groups_per_step = max(8, cfg.batch_size // k)  # k·groups_per_step ≈ batch_size base queries a step
    steps = max(1, len(x_train) // (groups_per_step * k))
    gen = torch.Generator().manual_seed(sampling_seed)
    return GroupTraining(base, k, x_train, val_groups, groups_per_step, steps, gen)
