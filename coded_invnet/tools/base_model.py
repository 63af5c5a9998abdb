"""The base model's own answers: the class the worker model (``worker.onnx``) gives each image with no
fault. A served answer is checked against it (agreement) besides the test label (true-label accuracy):
agreement isolates what serving (coding, reconstruction, faults) changes from the base model's own errors.

No gRPC here: the model runs in process, on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from coded_invnet.serving.onnx_model import OnnxModel

BATCH = 500  # images per onnxruntime run: bounded memory, few calls


def distinct_images(images: np.ndarray, requests: int) -> int:
    """How many of ``images`` a load of ``requests`` queries sends (query i sends image i % N)."""
    return min(len(images), requests)


def base_predictions(model_dir: str | Path, images: np.ndarray, requests: int | None = None) -> np.ndarray:
    """The base model's class for each of the first ``distinct_images(images, requests)`` images (all of
    them when ``requests`` is None), from ``model_dir/worker.onnx`` on one CPU thread."""
    count = len(images) if requests is None else distinct_images(images, requests)
    model = OnnxModel(Path(model_dir) / "worker.onnx", device="cpu", threads=1)
    model.load()
    (x,) = model.inputs
    classes = [
        model.run({x.name: np.ascontiguousarray(images[start : min(start + BATCH, count)], np.float32)})[
            "logits"
        ].argmax(axis=1)  # (B,)
        for start in range(0, count, BATCH)
    ]
    return np.concatenate(classes).astype(np.int64) if classes else np.zeros(0, np.int64)


def base_predictions_if_present(
    model_dir: str | Path, images: np.ndarray, requests: int | None = None
) -> np.ndarray | None:
    """``base_predictions``, or None (agreement unknown) where ``model_dir`` has no worker.onnx: a tool
    that loads a system it did not launch (a cluster, containers) may run where the models are not."""
    if not Path(model_dir, "worker.onnx").is_file():
        print(f"no worker.onnx in {model_dir}: agreement with the base model is not measured", flush=True)
        return None
    return base_predictions(model_dir, images, requests)
