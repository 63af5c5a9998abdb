"""Helpers for the frontend, client and end-to-end tests (the shared system lives in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

# The frontend's limits in the shared system, small enough that the bad-input tests can exceed them.
SYSTEM_MAX_MESSAGE_BYTES = 1 << 20
SYSTEM_MAX_QUEUE = 64
MODEL_NAME = "mnist"
LENIENT_STRAGGLER_TIMEOUT_MS = 2000.0  # where only failures, not slowness, should trigger decoding


def reference_logits(model_dir: Path, images: np.ndarray) -> np.ndarray:
    """The data worker's model run in process: what a non-reconstructed answer must equal."""
    session = ort.InferenceSession(str(model_dir / "worker.onnx"), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["logits"], {"x": images.astype(np.float32)})[0])


def random_images(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 28, 28), dtype=np.float32)
