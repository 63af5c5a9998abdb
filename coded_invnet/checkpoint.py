"""Saving and loading trained models (torch checkpoints), with clear errors for missing/foreign files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from coded_invnet.models.classifier import ClassifierSpec, InvNetClassifier


class ModelFileError(Exception):
    """A model file is missing, unreadable or of the wrong kind/shape."""


def load_checkpoint(path: str | os.PathLike[str], kind: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"model file {p} not found (run `make train`, or check the path)")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for corrupt files
        raise ModelFileError(f"cannot read model file {p}: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("kind") != kind:
        found = ckpt.get("kind") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ModelFileError(f"{p} holds a {found!r} model, expected {kind!r}")
    return ckpt


def save_checkpoint(path: str | os.PathLike[str], kind: str, state: dict[str, Any], **meta: Any) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    torch.save({"kind": kind, "state": state, **meta}, tmp)
    os.replace(tmp, p)  # atomic: an interrupted save never leaves a half-written checkpoint


def load_classifier(path: str | os.PathLike[str], kind: str = "classifier") -> InvNetClassifier:
    ckpt = load_checkpoint(path, kind)
    model = InvNetClassifier(ClassifierSpec.from_json(ckpt["spec"]))
    model.load_state_dict(ckpt["state"])
    return model.eval()


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
