"""Multiply-accumulate counts of conv/linear layers (the compute that matters for the overhead figures)."""

from __future__ import annotations

import torch
from torch import nn

from coded_invnet.models.invresnet import SpectralConv2d


def count_macs(module: nn.Module, example: torch.Tensor) -> int:
    """MACs of one forward pass of ``module`` on ``example`` (batch dimension included)."""
    total = 0

    def conv_hook(layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        conv = layer.conv if isinstance(layer, SpectralConv2d) else layer
        assert isinstance(conv, nn.Conv2d)
        kh, kw = conv.kernel_size
        total += output.numel() * (conv.in_channels // conv.groups) * kh * kw

    def linear_hook(layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(layer, nn.Linear)
        total += output.numel() * layer.in_features

    # a SpectralConv2d runs its inner conv functionally, so the wrapper is hooked, not the inner conv
    wrapped = {id(m.conv) for m in module.modules() if isinstance(m, SpectralConv2d)}
    handles = []
    for m in module.modules():
        if isinstance(m, SpectralConv2d) or (isinstance(m, nn.Conv2d) and id(m) not in wrapped):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            module.eval()(example)
    finally:
        for h in handles:
            h.remove()
    return total
