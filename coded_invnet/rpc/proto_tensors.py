"""coded.v1.Tensor messages ↔ arrays, with the strict checks of `coded_invnet.serving.tensors`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from coded_invnet.proto import coded_pb2
from coded_invnet.serving.errors import InvalidInput
from coded_invnet.serving.tensors import DEFAULT_MAX_BYTES, decode_array, encode_array


def arrays_from_proto(
    tensors: Iterable[coded_pb2.Tensor], *, max_bytes: int = DEFAULT_MAX_BYTES
) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for tensor in tensors:
        if not tensor.name:
            raise InvalidInput("tensor without a name")
        if tensor.name in arrays:
            raise InvalidInput(f"tensor {tensor.name!r} given twice")
        arrays[tensor.name] = decode_array(
            tensor.name, tensor.datatype, tensor.shape, tensor.data, max_bytes=max_bytes
        )
    return arrays


def arrays_to_proto(arrays: Mapping[str, np.ndarray]) -> list[coded_pb2.Tensor]:
    tensors = []
    for name, array in arrays.items():
        datatype, shape, data = encode_array(array)
        tensors.append(coded_pb2.Tensor(name=name, datatype=datatype, shape=shape, data=data))
    return tensors
