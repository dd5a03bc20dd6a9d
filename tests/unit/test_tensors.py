"""Tensors on the wire: Open Inference Protocol dtype names, little-endian row-major bytes.

`sidelight.tensors` encodes and decodes; `sidelight.transport.codec` moves the three parts in and
out of the protobuf `Tensor`. Every dtype must survive the trip, bytes included, and every way a
tensor can be malformed must be an InvalidTensor that names the field.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from sidelight import tensors
from sidelight.batching.scheduler import Scheduler
from sidelight.client import explain_request
from sidelight.dataplane import DataPlane, ExplainRequest, PredictRequest
from sidelight.errors import InvalidTensor
from sidelight.models.registry import ModelRegistry
from sidelight.settings import BatchingSettings
from sidelight.tensors import DTYPES, RawTensor
from sidelight.transport import codec
from sidelight.v1 import explainer_pb2 as pb
from sidelight.v1 import explainer_pb2_grpc as pb_grpc

# OIP name, an array of that dtype with awkward values, its first element as little-endian bytes
SAMPLES: list[tuple[str, np.ndarray[Any, Any], bytes]] = [
    (
        "FP32",
        np.array([[1.5, -0.0, np.inf], [np.nan, 3e38, -1e-45]], dtype=np.float32),
        b"\x00\x00\xc0\x3f",
    ),
    (
        "FP16",
        np.array([[1.5, -2.0, 65504.0], [6e-8, -np.inf, 0.1]], dtype=np.float16),
        b"\x00\x3e",
    ),
    (
        "FP64",
        np.array([[1.5, np.pi, -1e308], [5e-324, 0.0, -np.inf]], dtype=np.float64),
        b"\x00\x00\x00\x00\x00\x00\xf8\x3f",
    ),
    (
        "INT64",
        np.array([[1, -1, 2**62], [-(2**63), 2**63 - 1, 0]], dtype=np.int64),
        b"\x01\x00\x00\x00\x00\x00\x00\x00",
    ),
    (
        "INT32",
        np.array([[1, -1, 2**30], [-(2**31), 2**31 - 1, 0]], dtype=np.int32),
        b"\x01\x00\x00\x00",
    ),
    ("UINT8", np.array([[1, 0, 255], [128, 7, 42]], dtype=np.uint8), b"\x01"),
    ("BOOL", np.array([[True, False, True], [False, False, True]]), b"\x01"),
]
IDS = [name for name, _, _ in SAMPLES]


def test_every_oip_dtype_is_covered() -> None:
    assert set(DTYPES) == set(IDS) == {"FP32", "FP16", "FP64", "INT64", "INT32", "UINT8", "BOOL"}


@pytest.mark.parametrize(("name", "array", "first"), SAMPLES, ids=IDS)
def test_encode_is_little_endian_row_major(
    name: str, array: np.ndarray[Any, Any], first: bytes
) -> None:
    dtype, shape, data = tensors.encode(array)
    assert (dtype, shape) == (name, [2, 3])
    assert data[: len(first)] == first
    # Row-major: element (0, 1) follows element (0, 0), whatever the array's memory layout.
    little = array.dtype.newbyteorder("<")
    elements = [array[i, j].astype(little).tobytes() for i in range(2) for j in range(3)]
    assert data == b"".join(elements)
    assert len(data) == 6 * array.dtype.itemsize
    assert tensors.encode(np.asfortranarray(array))[2] == data
    assert tensors.encode(array.T.copy().T)[2] == data  # column-major memory, same tensor


@pytest.mark.parametrize(("name", "array", "first"), SAMPLES, ids=IDS)
def test_big_endian_arrays_are_sent_little_endian(
    name: str, array: np.ndarray[Any, Any], first: bytes
) -> None:
    swapped = array.astype(array.dtype.newbyteorder(">"))
    assert tensors.encode(swapped) == tensors.encode(array)


@pytest.mark.parametrize(("name", "array", "first"), SAMPLES, ids=IDS)
def test_round_trip_through_the_protobuf_message(
    name: str, array: np.ndarray[Any, Any], first: bytes
) -> None:
    message = codec.tensor_to_proto(array)
    assert (message.dtype, list(message.shape)) == (name, [2, 3])
    received = pb.Tensor.FromString(message.SerializeToString())
    decoded = codec.tensor_from_proto("inputs", received)
    assert decoded.dtype == DTYPES[name] and decoded.shape == (2, 3)
    np.testing.assert_array_equal(decoded, array)  # NaN == NaN here, and -0.0 == 0.0 ...
    assert decoded.tobytes() == array.astype(DTYPES[name]).tobytes()  # ... but not here
    assert not decoded.flags.writeable  # a view on the message's bytes, not a copy
    copy = codec.array_from_response(received)
    assert copy.flags.writeable
    np.testing.assert_array_equal(copy, array)


@pytest.mark.parametrize(("name", "array", "first"), SAMPLES, ids=IDS)
def test_raw_tensor_round_trip(name: str, array: np.ndarray[Any, Any], first: bytes) -> None:
    raw = RawTensor.from_array(array)
    assert (raw.dtype, raw.shape) == (name, (2, 3))
    np.testing.assert_array_equal(raw.decode("inputs"), array)


@pytest.mark.parametrize("shape", [[5], [2, 1, 8, 8], [1] * tensors.MAX_RANK, [0, 3], [4, 0]])
def test_shapes_of_any_rank_up_to_the_limit(shape: list[int]) -> None:
    array = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    decoded = tensors.decode("inputs", *tensors.encode(array))
    assert list(decoded.shape) == shape
    np.testing.assert_array_equal(decoded, array)


def test_unsupported_numpy_dtypes_are_not_sent() -> None:
    for dtype in (np.int16, np.uint32, np.complex64, np.float128):
        with pytest.raises(ValueError, match="no Open Inference Protocol name"):
            tensors.encode(np.zeros(2, dtype=dtype))


def invalid(field: str, *, dtype: str = "FP32", shape: list[int], data: bytes) -> Any:
    return pytest.param(field, dtype, shape, data, id=f"{field}-{dtype}-{shape}-{len(data)}")


@pytest.mark.parametrize(
    ("field", "dtype", "shape", "data"),
    [
        invalid("inputs.data", shape=[2, 3], data=b"\x00" * 23),
        invalid("inputs.data", shape=[2, 3], data=b"\x00" * 25),
        invalid("inputs.data", shape=[2, 3], data=b""),
        invalid("inputs.data", dtype="FP16", shape=[2, 3], data=b"\x00" * 24),  # sized as FP32
        invalid("inputs.data", dtype="INT64", shape=[3], data=b"\x00" * 12),
        invalid("inputs.data", dtype="BOOL", shape=[4], data=b"\x01" * 3),
        invalid("inputs.data", shape=[0, 3], data=b"\x00" * 4),  # nothing to hold, bytes sent
        invalid("inputs.dtype", dtype="FP8", shape=[1], data=b"\x00"),
        invalid("inputs.dtype", dtype="fp32", shape=[1], data=b"\x00" * 4),  # names are exact
        invalid("inputs.dtype", dtype="", shape=[1], data=b"\x00" * 4),
        invalid("inputs.dtype", dtype="BYTES", shape=[1], data=b"\x00"),
        invalid("inputs.shape", shape=[], data=b"\x00" * 4),
        invalid("inputs.shape", shape=[-1, 3], data=b"\x00" * 12),
        invalid("inputs.shape", shape=[-2, -3], data=b"\x00" * 24),  # a positive product
        invalid("inputs.shape", shape=[2, -1, 0], data=b""),
        invalid("inputs.shape", shape=[1] * (tensors.MAX_RANK + 1), data=b"\x00" * 4),
    ],
)
def test_malformed_tensors_name_the_field(
    field: str, dtype: str, shape: list[int], data: bytes
) -> None:
    with pytest.raises(InvalidTensor) as raised:
        tensors.decode("inputs", dtype, shape, data)
    assert raised.value.field == field
    assert str(raised.value).startswith(f"{field}: ")
    message = pb.Tensor(dtype=dtype, shape=shape, data=data)
    with pytest.raises(InvalidTensor) as through_codec:
        codec.tensor_from_proto("inputs", message)
    assert through_codec.value.field == field


def test_the_field_name_is_the_callers() -> None:
    with pytest.raises(InvalidTensor, match=r"^baselines\.custom\.data: has 3 bytes"):
        tensors.decode("baselines.custom", "FP32", [1], b"abc")


# Dimensions whose int64 product wraps around: to 0 for the first three, which once let an
# empty payload pass the size check and fail in numpy's reshape (INTERNAL instead of
# INVALID_ARGUMENT). Zero-size shapes with huge other dimensions are past what numpy indexes.
OVERFLOWING = [
    ([2**32, 2**32], "inputs.data"),
    ([2**31, 2**31, 4], "inputs.data"),
    ([2**62, 4], "inputs.data"),
    ([2**63 - 1, 2], "inputs.data"),
    ([0, 2**63 - 1], "inputs.shape"),
    ([2**62, 0, 2**62], "inputs.shape"),
]


@pytest.mark.parametrize(("shape", "field"), OVERFLOWING)
def test_huge_shapes_are_invalid_not_a_crash(shape: list[int], field: str) -> None:
    with pytest.raises(InvalidTensor) as raised:
        tensors.decode("inputs", "FP32", shape, b"")
    assert raised.value.field == field


def test_huge_shapes_through_the_server_are_invalid_argument(channel: grpc.Channel) -> None:
    stub = pb_grpc.ExplainerStub(channel)
    for shape, field in OVERFLOWING:
        request = pb.ExplainRequest(
            model="digits", method="saliency", inputs=pb.Tensor(dtype="FP32", shape=shape)
        )
        with pytest.raises(grpc.RpcError) as raised:
            stub.Explain(request, timeout=60)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
        assert raised.value.details().startswith(f"{field}: ")


@pytest.fixture(scope="module")
def plane(registry: ModelRegistry) -> DataPlane:
    return DataPlane(registry, Scheduler(BatchingSettings()))


@pytest.mark.parametrize(
    ("shape", "field"),
    [([0, 1, 8, 8], "inputs.shape"), ([2, 0, 8, 8], "inputs.shape"), ([2, 1, 8], "inputs.shape")],
)
def test_zero_instance_or_wrong_shape_is_refused_before_queueing(
    plane: DataPlane, shape: list[int], field: str
) -> None:
    """A zero-size tensor is a valid tensor; a request without instances is not a valid
    request. The data plane refuses it, naming the field, before anything is queued."""
    raw = RawTensor.from_array(np.zeros(shape, dtype=np.float32))
    requests = [
        plane.explain(ExplainRequest(model="digits", inputs=raw, method="saliency")),
        plane.predict(PredictRequest(model="digits", inputs=raw)),
    ]
    for request in requests:
        with pytest.raises(InvalidTensor) as raised:
            asyncio.run(request)
        assert raised.value.field == field


def test_explain_request_carries_the_tensor_unchanged() -> None:
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    message = explain_request("digits", x, "integrated_gradients", params={"n_steps": 8})
    request = codec.explain_request(pb.ExplainRequest.FromString(message.SerializeToString()), 5.0)
    assert request.params == {"n_steps": 8.0}
    assert request.deadline == 5.0
    decoded = request.inputs.decode("inputs")
    assert decoded.tobytes() == x.tobytes()
    assert torch.equal(torch.from_numpy(decoded.copy()), torch.from_numpy(x))
