"""Raw tensors as they travel: Open Inference Protocol dtype names, little-endian row-major bytes.

The transport turns a protobuf Tensor into (dtype, shape, data) and calls `decode`; the core
only ever sees numpy arrays. Decoding is zero-copy (a read-only view on the message bytes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sidelight.errors import InvalidTensor, shown

# Open Inference Protocol names -> numpy dtypes, all little-endian.
DTYPES: dict[str, np.dtype[np.generic]] = {
    "FP32": np.dtype("<f4"),
    "FP16": np.dtype("<f2"),
    "FP64": np.dtype("<f8"),
    "INT64": np.dtype("<i8"),
    "INT32": np.dtype("<i4"),
    "UINT8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}

MAX_RANK = 8


@dataclass(frozen=True)
class RawTensor:
    """A tensor as it arrived: decoded only once the model it is for has been found."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes

    @classmethod
    def from_array(cls, array: npt.NDArray[np.generic]) -> RawTensor:
        dtype, shape, data = encode(array)
        return cls(dtype, tuple(shape), data)

    def decode(self, field: str) -> npt.NDArray[np.generic]:
        return decode(field, self.dtype, self.shape, self.data)


def dtype_name(dtype: np.dtype[np.generic]) -> str:
    name = _NAMES.get(dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype)
    if name is None:
        raise ValueError(f"dtype {dtype} has no Open Inference Protocol name")
    return name


def decode(field: str, dtype: str, shape: Sequence[int], data: bytes) -> npt.NDArray[np.generic]:
    """A read-only array over `data`; InvalidTensor naming `field` when the parts disagree."""
    if dtype not in DTYPES:
        raise InvalidTensor(
            f"{field}.dtype", f"unknown dtype {shown(dtype)}; one of {sorted(DTYPES)}"
        )
    dims = list(shape)
    if not dims:
        raise InvalidTensor(f"{field}.shape", "is empty; a batch needs at least one dimension")
    if len(dims) > MAX_RANK:
        raise InvalidTensor(f"{field}.shape", f"has rank {len(dims)}; at most {MAX_RANK}")
    if any(d < 0 for d in dims):
        raise InvalidTensor(f"{field}.shape", f"{dims} has a negative dimension")
    np_dtype = DTYPES[dtype]
    # Python integers: an int64 product of client-sent dimensions can wrap around (to 0 with
    # [2**32, 2**32]) and let an empty payload pass, to fail later in reshape as a bug.
    expected = math.prod(dims) * np_dtype.itemsize
    if len(data) != expected:
        raise InvalidTensor(
            f"{field}.data",
            f"has {len(data)} bytes; shape {dims} of {dtype} needs {expected}",
        )
    try:
        return np.frombuffer(data, dtype=np_dtype).reshape(dims)
    except ValueError as exc:  # zero-size, but the other dimensions are past what numpy indexes
        raise InvalidTensor(f"{field}.shape", f"{dims} is too large") from exc


def encode(array: npt.NDArray[np.generic]) -> tuple[str, list[int], bytes]:
    """(dtype name, shape, little-endian row-major bytes) of `array`."""
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return dtype_name(array.dtype), list(array.shape), np.ascontiguousarray(array).tobytes()
