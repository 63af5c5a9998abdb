"""An ONNX model behind onnxruntime: loading (CUDA when available), warm-up, and strictly checked runs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from coded_invnet.serving.config import ServingConfig
from coded_invnet.serving.errors import ConfigError, InvalidInput, ServingError, Unavailable
from coded_invnet.serving.tensors import DTYPES

log = logging.getLogger(__name__)
# Inputs up to this many elements (16 MNIST images; a k=10 group of one row each) run on the event
# loop's thread: a run that short costs less than handing it to a thread and back.
INLINE_MAX_ELEMENTS = 16 * 28 * 28
ORT_DATATYPES = {
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(uint8)": "UINT8",
    "tensor(bool)": "BOOL",
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 for a dynamic dimension

    @property
    def dtype(self) -> np.dtype:
        if self.datatype not in DTYPES:
            raise ServingError(f"model tensor {self.name!r} has unsupported type {self.datatype}")
        return DTYPES[self.datatype].newbyteorder("=")

    def check(self, array: np.ndarray) -> None:
        """Raise InvalidInput unless `array` fits this spec (dtype, rank, static dimensions)."""
        if array.dtype != self.dtype:
            raise InvalidInput(f"tensor {self.name!r} has dtype {array.dtype}; model expects {self.datatype}")
        fits = len(array.shape) == len(self.shape) and all(
            want in (-1, got) for want, got in zip(self.shape, array.shape, strict=True)
        )
        if not fits:
            raise InvalidInput(
                f"tensor {self.name!r} has shape {list(array.shape)}; the model expects {list(self.shape)} "
                "(-1: any size)"
            )


@dataclass(frozen=True)
class Computed:
    outputs: dict[str, np.ndarray]
    compute_us: float
    rows: int | None = None  # queries computed, for metrics (None: the first input's first axis)


def _spec(node: ort.NodeArg) -> TensorSpec:
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in node.shape)
    return TensorSpec(node.name, ORT_DATATYPES.get(node.type, node.type), shape)


def providers_for(device: str) -> list[str]:
    available = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise ServingError(f"device=cuda but onnxruntime offers only {available}")
    use_cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in available
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]


class OnnxModel:
    """Created unloaded (cheap); `load()` builds the session and warms it up (seconds, in a thread)."""

    def __init__(self, path: Path, device: str = "auto", threads: int = 0) -> None:
        self.path = path
        self.device = device
        self.threads = threads
        self._session: ort.InferenceSession | None = None
        self.inputs: tuple[TensorSpec, ...] = ()
        self.outputs: tuple[TensorSpec, ...] = ()

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def provider(self) -> str:
        return self._session.get_providers()[0] if self._session else ""

    def load(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(self.path), options, providers=providers_for(self.device))
        self.inputs = tuple(_spec(node) for node in session.get_inputs())
        self.outputs = tuple(_spec(node) for node in session.get_outputs())
        # Warm-up: the first run allocates and picks kernels; do it before reporting SERVING.
        zeros = {spec.name: np.zeros([max(dim, 1) for dim in spec.shape], spec.dtype) for spec in self.inputs}
        session.run(None, zeros)
        self._session = session
        log.info("model loaded", extra={"model": str(self.path), "provider": self.provider})

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on validated inputs; returns every output by name. Blocking: call it in a thread."""
        if self._session is None:
            raise Unavailable(f"model {self.name} is still loading")
        expected = {spec.name for spec in self.inputs}
        if set(feeds) != expected:
            raise InvalidInput(f"inputs {sorted(feeds)} given; model {self.name} takes {sorted(expected)}")
        for spec in self.inputs:
            spec.check(feeds[spec.name])
        try:
            results = self._session.run(None, dict(feeds))
        except ort.capi.onnxruntime_pybind11_state.InvalidArgument as error:
            raise InvalidInput(f"model {self.name} rejected the input: {error}") from error
        return {spec.name: np.asarray(result) for spec, result in zip(self.outputs, results, strict=True)}

    async def infer(self, feeds: Mapping[str, np.ndarray]) -> Computed:
        """`run`, timed alone. Small inputs run inline: a thread hand-off would cost more than the run
        (two wake-ups on busy cores); larger ones in a worker thread, so the event loop keeps serving."""

        def timed() -> Computed:
            start = time.perf_counter()
            outputs = self.run(feeds)
            return Computed(outputs, (time.perf_counter() - start) * 1e6)

        if sum(array.size for array in feeds.values()) <= INLINE_MAX_ELEMENTS:
            return timed()
        return await asyncio.to_thread(timed)


def open_model(cfg: ServingConfig) -> OnnxModel:
    """The (unloaded) model this service runs; fails fast, naming the settings, if the file is missing."""
    path = cfg.model_path()
    if not path.is_file():
        chosen_by = "CODED_MODEL_DIR, CODED_MODE, CODED_K, CODED_ROLE, CODED_PARITIES"
        origin = "CODED_MODEL_FILE" if cfg.model_file else chosen_by
        raise ConfigError(f"model file {path} not found (chosen by {origin})")
    return OnnxModel(path, cfg.device, cfg.ort_threads)
