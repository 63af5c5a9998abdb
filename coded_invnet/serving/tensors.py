"""Tensors ↔ bytes with strict validation: every defect of a request becomes an `InvalidInput` (or
`Overloaded` for size) that says what was wrong. Datatypes use the KServe v2 names ("FP32", ...)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from coded_invnet.proto import coded_pb2
from coded_invnet.serving.config import BACKEND_MAX_MESSAGE_BYTES
from coded_invnet.serving.errors import InvalidInput, Overloaded

# Little-endian on the wire whatever the host order.
DTYPES: dict[str, np.dtype] = {
    "FP32": np.dtype("<f4"),
    "FP16": np.dtype("<f2"),
    "FP64": np.dtype("<f8"),
    "INT64": np.dtype("<i8"),
    "INT32": np.dtype("<i4"),
    "UINT8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
DATATYPES: dict[np.dtype, str] = {dtype.newbyteorder("="): name for name, dtype in DTYPES.items()}
DEFAULT_MAX_BYTES = BACKEND_MAX_MESSAGE_BYTES


def datatype_of(dtype: np.dtype) -> str:
    try:
        return DATATYPES[dtype.newbyteorder("=")]
    except KeyError:
        raise InvalidInput(f"unsupported dtype {dtype}") from None


def decode_array(
    name: str,
    datatype: str,
    shape: Sequence[int],
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    allow_empty: bool = False,
) -> np.ndarray:
    """Raw little-endian bytes → array (zero-copy, read-only), after checking that they fit together."""
    dtype = DTYPES.get(datatype)
    if dtype is None:
        raise InvalidInput(
            f"tensor {name!r}: unsupported datatype {datatype!r}; use one of {', '.join(DTYPES)}"
        )
    if any(dim < 0 for dim in shape):
        raise InvalidInput(f"tensor {name!r}: negative dimension in shape {list(shape)}")
    count = math.prod(shape)
    if count == 0 and not allow_empty:
        raise InvalidInput(f"tensor {name!r} is empty (shape {list(shape)})")
    expected = count * dtype.itemsize
    if expected > max_bytes:
        raise Overloaded(f"tensor {name!r} of shape {list(shape)} needs {expected} bytes; limit {max_bytes}")
    if len(data) != expected:
        raise InvalidInput(
            f"tensor {name!r}: {len(data)} bytes do not match shape {list(shape)} of {datatype} "
            f"({expected} bytes expected)"
        )
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput(f"tensor {name!r} contains NaN or Inf")
    return array


def encode_array(array: np.ndarray) -> tuple[str, list[int], bytes]:
    """Array → (datatype, shape, little-endian bytes)."""
    datatype = datatype_of(array.dtype)
    return datatype, list(array.shape), np.ascontiguousarray(array, dtype=DTYPES[datatype]).tobytes()


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
