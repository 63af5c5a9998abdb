"""ONNX export of the shipped models (I/O contract: docs/CONTRACTS.md) and the manifest.

    python -m coded_invnet.tools.export all                      # every data set under models/
    python -m coded_invnet.tools.export dataset --dataset mnist

Spectrally-normalised convs are baked into plain convs first, so the graphs are ordinary CNNs.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from coded_invnet.checkpoint import ModelFileError, load_checkpoint, load_classifier, load_encoder, load_parm
from coded_invnet.models.encoder import MeanEncoder
from coded_invnet.models.invresnet import to_plain
from coded_invnet.models.parm import arch_of

OPSET = 17
MANIFEST_META = (  # copied from checkpoints into the manifest entry of each exported file
    "val_accuracy",
    "val_recovery",
    "val_degraded_accuracy",
    "k",
    "parities",
    "loss",
    "mixup",
)


def export_module(
    module: nn.Module, example: torch.Tensor, path: Path, input_name: str, outputs: list[str]
) -> Path:
    """Export with a dynamic batch axis on every input and output."""
    module = to_plain(copy.deepcopy(module)).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {name: {0: "batch"} for name in [input_name, *outputs]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    return path


def export_dataset(model_dir: Path) -> dict[str, Any]:
    """Export every checkpoint found in ``model_dir`` and (re)write its manifest.json."""
    classifier_pt = model_dir / "classifier.pt"
    base = load_classifier(classifier_pt)
    shape = base.spec.image_shape
    x1 = torch.rand(2, *shape)
    files: dict[str, dict[str, Any]] = {}

    def record(path: Path, ckpt_path: Path, **extra: Any) -> None:
        meta = load_checkpoint(ckpt_path, extra.pop("kind"))
        files[path.name] = {
            "source": ckpt_path.name,
            "command": meta.get("command"),
            **{k: meta[k] for k in MANIFEST_META if k in meta},
            **extra,
        }

    export_module(base, x1, model_dir / "worker.onnx", "x", ["logits", "z"])
    record(model_dir / "worker.onnx", classifier_pt, kind="classifier")
    export_module(base.h, torch.rand(2, base.g.latent_dim), model_dir / "head.onnx", "z", ["logits"])
    record(model_dir / "head.onnx", classifier_pt, kind="classifier")
    for ckpt_path in sorted(model_dir.glob("encoder_k*.pt")):
        enc = load_encoder(ckpt_path)
        xs = torch.rand(2, enc.spec.k, *shape)
        out = export_module(enc, xs, ckpt_path.with_suffix(".onnx"), "x", ["parity"])  # (B, [r,] C, H, W)
        record(out, ckpt_path, kind="encoder")
        if enc.spec.parities > 1:
            continue  # ParM's mean encoder is exported once per k, beside the one-parity F_k
        mean_out = export_module(
            MeanEncoder(), xs, model_dir / f"parm_encoder_k{enc.spec.k}.onnx", "x", ["parity"]
        )
        files[mean_out.name] = {"source": "MeanEncoder (no weights)", "k": enc.spec.k}
    for ckpt_path in sorted(model_dir.glob("parm_k*.pt")):
        parm = load_parm(ckpt_path)
        out = export_module(parm, x1, ckpt_path.with_suffix(".onnx"), "x", ["logits"])
        arch = arch_of(load_checkpoint(ckpt_path, "parm")["spec"])
        record(out, ckpt_path, kind="parm", arch=arch)
    manifest_path = model_dir / "manifest.json"
    previous = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    manifest = {
        **previous,
        "dataset": model_dir.name,
        "image_shape": list(shape),
        "latent_dim": base.g.latent_dim,
        "num_classes": base.spec.num_classes,
        "classifier_spec": base.spec.to_json(),
        "files": files,
        "export_command": "python -m coded_invnet.tools.export " + " ".join(sys.argv[1:]),
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m coded_invnet.tools.export", description=__doc__.splitlines()[0]
    )
    parser.add_argument("what", choices=("all", "dataset"))
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--models-dir", default="models")
    args = parser.parse_args(argv)
    root = Path(args.models_dir)
    dirs = (
        sorted(p.parent for p in root.glob("*/classifier.pt"))
        if args.what == "all"
        else [root / args.dataset]
    )
    if not dirs:
        print(f"error: no models/<dataset>/classifier.pt under {root} (run `make train`)", file=sys.stderr)
        return 2
    try:
        for d in dirs:
            manifest = export_dataset(d)
            print(f"exported {d}: {', '.join(sorted(manifest['files']))}")
    except ModelFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
