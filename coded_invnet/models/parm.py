"""ParM parity models (Kosaian et al., SOSP 2019), applied to the averaging encoder's output
(models.encoder.MeanEncoder) and trained so their logits ≈ the mean of the k base logits.

Three architectures, named by the ``arch`` field of the spec a checkpoint stores:
- "cnn" (the shipped one): models.parm_cnn.ParityCNN, a plain CNN of about one worker query's MACs;
- "invnet": the base architecture with every spectrally-normalised conv made a plain conv (no Lipschitz
  bound), initialised from the base weights;
- "invnet-sn": the base architecture with its spectral norm (a spec without ``arch``:
  models/<ds>/parm_sn_k*.pt).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from coded_invnet.models.classifier import ClassifierSpec, InvNetClassifier
from coded_invnet.models.invresnet import to_plain
from coded_invnet.models.parm_cnn import ParityCNN, ParityCNNSpec

PARM_ARCHS = ("cnn", "invnet", "invnet-sn")
SN_ARCH = "invnet-sn"  # the arch of a spec without an ``arch`` field


class ParityModel(nn.Module):
    """The base architecture as a parity model; ``constrained=False`` drops the spectral norm."""

    def __init__(self, spec: ClassifierSpec, constrained: bool = True) -> None:
        super().__init__()
        self.net = InvNetClassifier(spec)
        if not constrained:
            to_plain(self.net.g)

    def forward(self, x_parity: torch.Tensor) -> torch.Tensor:
        """x_parity (B, C, H, W) → parity logits (B, classes)."""
        return self.net(x_parity)[0]


def arch_of(spec: dict[str, Any]) -> str:
    """The architecture a stored parity-model spec names (``arch``; invnet-sn where it has none)."""
    arch = str(spec.get("arch", SN_ARCH))
    assert arch in PARM_ARCHS, f"unknown ParM arch {arch!r}; expected one of {PARM_ARCHS}"
    return arch


def parity_network(spec: dict[str, Any]) -> nn.Module:
    """An untrained parity model of the architecture a stored spec names (arch_of)."""
    arch = arch_of(spec)
    if arch == "cnn":
        return ParityCNN(ParityCNNSpec.from_json(spec))
    fields = {key: value for key, value in spec.items() if key != "arch"}
    return ParityModel(ClassifierSpec.from_json(fields), constrained=arch == SN_ARCH)


def parity_spec(
    arch: str,
    base_spec: ClassifierSpec,
    cnn_widths: tuple[int, int, int] | None = None,
    cnn_hidden: int | None = None,
) -> dict[str, Any]:
    """The stored spec of a parity model of ``arch`` for a base classifier of ``base_spec``; the CNN's
    widths and hidden size default to the shipped ones (ParityCNNSpec)."""
    assert arch in PARM_ARCHS, f"unknown ParM arch {arch!r}; expected one of {PARM_ARCHS}"
    if arch == "cnn":
        shipped = ParityCNNSpec(image_shape=base_spec.image_shape, num_classes=base_spec.num_classes)
        sizes = {"widths": cnn_widths or shipped.widths, "hidden": cnn_hidden or shipped.hidden}
        return ParityCNNSpec(**{**shipped.to_json(), **sizes}).to_json()
    return {**base_spec.to_json(), "arch": arch}
