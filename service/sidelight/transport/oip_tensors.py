"""Open Inference Protocol tensors <-> Sidelight's raw tensors.

An input arrives either raw (`raw_input_contents[k]`: row-major little-endian bytes, one entry
per input, in order) or typed (`inputs[i].contents`: the repeated field of its datatype), never
both; FP16 has no typed field and travels raw only. Outputs go back raw when the request came
raw (tritonclient's `InferResult.as_numpy` decodes `raw_output_contents` only), typed when it
came typed (a client that builds typed requests reads typed answers; Triton answers raw to
both). Errors name the protocol's own fields.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from sidelight import tensors
from sidelight.errors import InvalidTensor
from sidelight.oip import grpc_service_pb2 as oip
from sidelight.tensors import DTYPES, RawTensor

# The typed field that carries each datatype Sidelight takes (the protocol widens INT8/16 and
# UINT8/16 to 32 bits on the wire). FP16 has none.
TYPED_FIELDS: dict[str, str] = {
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "INT64": "int64_contents",
    "INT32": "int_contents",
    "UINT8": "uint_contents",
    "BOOL": "bool_contents",
}
CONTENTS_FIELDS = (
    "bool_contents",
    "int_contents",
    "int64_contents",
    "uint_contents",
    "uint64_contents",
    "fp32_contents",
    "fp64_contents",
    "bytes_contents",
)

InputTensor = oip.ModelInferRequest.InferInputTensor


def read_input(request: oip.ModelInferRequest, index: int) -> RawTensor:
    """`request.inputs[index]` with its contents, raw or typed, checked against its shape."""
    tensor = request.inputs[index]
    field = f"inputs[{index}]"
    if tensor.datatype not in DTYPES:
        raise InvalidTensor(
            f"{field}.datatype", f"{tensor.datatype!r} is not one of {sorted(DTYPES)}"
        )
    shape = _shape(f"{field}.shape", tensor.shape)
    if request.raw_input_contents:
        if _typed_fields(tensor):
            raise InvalidTensor(
                f"{field}.contents",
                "given with raw_input_contents: send each input raw or typed, not both",
            )
        return _raw(request, index, tensor.datatype, shape)
    return RawTensor(tensor.datatype, shape, _typed(field, tensor, shape))


def check_raw_count(request: oip.ModelInferRequest) -> None:
    """raw_input_contents, when used, holds one entry per input."""
    raw, inputs = len(request.raw_input_contents), len(request.inputs)
    if raw and raw != inputs:
        raise InvalidTensor(
            "raw_input_contents", f"has {raw} entries for {inputs} inputs: one per input"
        )


def add_output(
    response: oip.ModelInferResponse, name: str, array: npt.NDArray[Any], *, raw: bool
) -> None:
    """Append `array` as output `name`: raw bytes, or the typed field of its datatype."""
    dtype, shape, data = tensors.encode(array)
    output = response.outputs.add(name=name, datatype=dtype, shape=shape)
    if raw:
        response.raw_output_contents.append(data)
    else:
        getattr(output.contents, TYPED_FIELDS[dtype]).extend(array.ravel().tolist())


def _shape(field: str, dims: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(d) for d in dims)
    if not shape:
        raise InvalidTensor(field, "is empty; a batch needs at least one dimension")
    if len(shape) > tensors.MAX_RANK:
        raise InvalidTensor(field, f"has rank {len(shape)}; at most {tensors.MAX_RANK}")
    if any(d < 0 for d in shape):
        raise InvalidTensor(field, f"{list(shape)} has a negative dimension")
    return shape


def _raw(
    request: oip.ModelInferRequest, index: int, dtype: str, shape: tuple[int, ...]
) -> RawTensor:
    data = request.raw_input_contents[index]
    # Python integers: an int64 product of client-sent dimensions could wrap around.
    expected = math.prod(shape) * DTYPES[dtype].itemsize
    if len(data) != expected:
        raise InvalidTensor(
            f"raw_input_contents[{index}]",
            f"has {len(data)} bytes; inputs[{index}] of shape {list(shape)} and {dtype} "
            f"needs {expected}",
        )
    return RawTensor(dtype, shape, data)


def _typed(field: str, tensor: InputTensor, shape: tuple[int, ...]) -> bytes:
    """The little-endian bytes of a typed tensor's values."""
    dtype = tensor.datatype
    wanted = TYPED_FIELDS.get(dtype)
    if wanted is None:
        raise InvalidTensor(
            f"{field}.contents",
            f"{dtype} has no typed field in the protocol: send it in raw_input_contents",
        )
    for other in _typed_fields(tensor):
        if other != wanted:
            raise InvalidTensor(
                f"{field}.contents.{other}", f"a {dtype} tensor's values go in {wanted}"
            )
    values = getattr(tensor.contents, wanted)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidTensor(
            f"{field}.contents.{wanted}",
            f"has {len(values)} values; shape {list(shape)} needs {count}",
        )
    if dtype == "UINT8" and any(v > 255 for v in values):
        raise InvalidTensor(f"{field}.contents.{wanted}", "holds a value above 255 for UINT8")
    array: npt.NDArray[Any] = np.array(values, dtype=DTYPES[dtype])
    return array.tobytes()


def _typed_fields(tensor: InputTensor) -> list[str]:
    """The typed fields that hold values."""
    return [name for name in CONTENTS_FIELDS if len(getattr(tensor.contents, name))]
