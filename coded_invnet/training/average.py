"""Exponential moving average of a model's weights (what the classifiers ship)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class WeightAverage:
    """Exponential moving average of a model's parameters (buffers, e.g. power-iteration vectors, follow
    the live model). Validating and shipping the average instead of the last step's weights removes most
    of the step-to-step noise of the final epochs."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        assert 0 < decay < 1, f"decay must be in (0, 1), got {decay}"
        self.decay, self.updates = decay, 0
        self.param_names = {name for name, _ in model.named_parameters()}
        self.shadow = {key: value.detach().clone() for key, value in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))  # short memory at the start
        for key, value in model.state_dict().items():
            if key in self.param_names:
                self.shadow[key].lerp_(value, 1 - decay)
            else:
                self.shadow[key].copy_(value)

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[None]:
        """``model`` holds the average inside the block and its own weights again after it."""
        live = {key: value.detach().clone() for key, value in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield
        finally:
            model.load_state_dict(live)
