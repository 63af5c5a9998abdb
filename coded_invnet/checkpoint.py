"""Saving and loading trained models (torch checkpoints), with clear errors for missing/foreign files.

The one place that reads model files. Checkpoints hold tensors and plain metadata (dicts, lists,
strings, numbers) only and are read with ``weights_only=True``: a file that would run code when
unpickled (a pickled callable or object) is refused with ModelFileError.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from coded_invnet.models.classifier import ClassifierSpec, InvNetClassifier
from coded_invnet.models.encoder import EncoderSpec, FusionEncoder
from coded_invnet.models.parm import parity_network


class ModelFileError(Exception):
    """A model file is missing, unreadable or of the wrong kind/shape."""


def read_torch_file(path: str | os.PathLike[str]) -> Any:
    """The contents of a torch file, tensors and plain data only: never runs code from the file."""
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"model file {p} not found (run `make train`, or check the path)")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or code-carrying files
        raise ModelFileError(f"cannot read model file {p}: {exc}") from exc


def write_torch_file(path: str | os.PathLike[str], contents: Any) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    torch.save(contents, tmp)
    os.replace(tmp, p)  # atomic: an interrupted save never leaves a half-written file


def load_checkpoint(path: str | os.PathLike[str], kind: str) -> dict[str, Any]:
    ckpt = read_torch_file(path)
    if not isinstance(ckpt, dict) or ckpt.get("kind") != kind:
        found = ckpt.get("kind") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ModelFileError(f"{path} holds a {found!r} model, expected {kind!r}")
    return ckpt


def save_checkpoint(path: str | os.PathLike[str], kind: str, state: dict[str, Any], **meta: Any) -> None:
    write_torch_file(path, {"kind": kind, "state": state, **meta})


def load_classifier(path: str | os.PathLike[str], kind: str = "classifier") -> InvNetClassifier:
    ckpt = load_checkpoint(path, kind)
    model = InvNetClassifier(ClassifierSpec.from_json(ckpt["spec"]))
    model.load_state_dict(ckpt["state"])
    return model.eval()


def load_encoder(path: str | os.PathLike[str]) -> FusionEncoder:
    ckpt = load_checkpoint(path, "encoder")
    encoder = FusionEncoder(EncoderSpec.from_json(ckpt["spec"]))
    encoder.load_state_dict(ckpt["state"])
    return encoder.eval()


def load_parm(path: str | os.PathLike[str]) -> torch.nn.Module:
    """A ParM parity model of the architecture its spec names (models.parm.parity_network)."""
    ckpt = load_checkpoint(path, "parm")
    model = parity_network(ckpt["spec"])
    model.load_state_dict(ckpt["state"])
    return model.eval()


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
