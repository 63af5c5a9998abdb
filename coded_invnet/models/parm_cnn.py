"""ParM's parity network without the base's constraint: a plain CNN of about one worker query's MACs.

The shipped ParM parity model (models/<ds>/parm_k{k}.pt, ``arch`` "cnn"): three 3×3 conv stages with
batch norm and ReLU (the last two stride 2), then a two-layer MLP to the logits. It maps the averaging
encoder's parity image to an estimate of the mean of the k base logits, as ParityModel does, but nothing
bounds its Lipschitz constant.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from coded_invnet.models.spec import JsonSpec


@dataclass(frozen=True)
class ParityCNNSpec(JsonSpec):
    """The defaults are the shipped parity network (7.5 M MACs a query on 28×28, the worker's 7.2 M)."""

    arch: str = "cnn"  # what coded_invnet.checkpoint.load_parm dispatches on
    image_shape: tuple[int, int, int] = (1, 28, 28)
    widths: tuple[int, int, int] = (32, 64, 96)  # conv stages at H, H/2, H/4
    hidden: int = 256
    num_classes: int = 10


def _stage(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
    )


class ParityCNN(nn.Module):
    def __init__(self, spec: ParityCNNSpec) -> None:
        super().__init__()
        assert spec.arch == "cnn", f"ParityCNN builds arch 'cnn', got {spec.arch!r}"
        self.spec = spec
        c, h, w = spec.image_shape
        w1, w2, w3 = spec.widths
        self.features = nn.Sequential(_stage(c, w1, 1), _stage(w1, w2, 2), _stage(w2, w3, 2))
        flat = w3 * ((h + 3) // 4) * ((w + 3) // 4)
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(flat, spec.hidden), nn.ReLU())
        self.out = nn.Linear(spec.hidden, spec.num_classes)

    def forward(self, x_parity: torch.Tensor) -> torch.Tensor:
        """x_parity (B, C, H, W) → parity logits (B, classes)."""
        f = self.features(x_parity)  # (B, w3, H/4, W/4)
        return self.out(self.mlp(f))  # (B, classes)
