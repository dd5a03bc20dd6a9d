"""Open Inference Protocol tensor contents, raw and typed, for every datatype Sidelight takes."""

from __future__ import annotations

import numpy as np
import pytest
from sidelight.errors import InvalidTensor
from sidelight.oip import grpc_service_pb2 as oip
from sidelight.transport import oip_tensors

ARRAYS = {
    "FP32": np.array([[0.5, -1.25], [3.0, 1e-3]], np.float32),
    "FP64": np.array([[0.1, -2.0], [1e300, 0.0]], np.float64),
    "INT64": np.array([[1, -(2**40)], [7, 0]], np.int64),
    "INT32": np.array([[1, -(2**30)], [7, 0]], np.int32),
    "UINT8": np.array([[0, 255], [7, 1]], np.uint8),
    "BOOL": np.array([[True, False], [False, True]]),
}


def typed_request(datatype: str, values: list[object], shape: list[int]) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="input", datatype=datatype, shape=shape)
    getattr(tensor.contents, oip_tensors.TYPED_FIELDS[datatype]).extend(values)
    return request


@pytest.mark.parametrize("datatype", list(ARRAYS))
def test_typed_contents_decode_to_the_same_bytes_as_raw(datatype: str) -> None:
    array = ARRAYS[datatype]
    typed = oip_tensors.read_input(typed_request(datatype, array.ravel().tolist(), [2, 2]), 0)
    raw_request = oip.ModelInferRequest(model_name="m", raw_input_contents=[array.tobytes()])
    raw_request.inputs.add(name="input", datatype=datatype, shape=[2, 2])
    raw = oip_tensors.read_input(raw_request, 0)
    assert typed == raw
    np.testing.assert_array_equal(typed.decode("inputs"), array)


@pytest.mark.parametrize("datatype", list(ARRAYS))
def test_outputs_round_trip_raw_and_typed(datatype: str) -> None:
    array = ARRAYS[datatype]
    for raw in (True, False):
        response = oip.ModelInferResponse()
        oip_tensors.add_output(response, "out", array, raw=raw)
        output = response.outputs[0]
        assert (output.name, output.datatype, list(output.shape)) == ("out", datatype, [2, 2])
        if raw:
            flat = np.frombuffer(response.raw_output_contents[0], array.dtype)
        else:
            assert not response.raw_output_contents
            flat = np.array(getattr(output.contents, oip_tensors.TYPED_FIELDS[datatype]))
        np.testing.assert_array_equal(flat.reshape(2, 2), array)


def test_fp16_travels_raw_only() -> None:
    request = oip.ModelInferRequest(model_name="m")
    request.inputs.add(name="input", datatype="FP16", shape=[1, 2])
    with pytest.raises(InvalidTensor, match=r"^inputs\[0\]\.contents: FP16 has no typed field"):
        oip_tensors.read_input(request, 0)
    half = np.array([[0.5, -2.0]], np.float16)
    request.raw_input_contents.append(half.tobytes())
    np.testing.assert_array_equal(oip_tensors.read_input(request, 0).decode("inputs"), half)


def test_uint8_values_must_fit() -> None:
    with pytest.raises(InvalidTensor, match=r"^inputs\[0\]\.contents\.uint_contents: .*255"):
        oip_tensors.read_input(typed_request("UINT8", [1, 256], [1, 2]), 0)


@pytest.mark.parametrize(
    ("datatype", "shape", "field"),
    [
        ("FP8", [1], r"inputs\[0\]\.datatype"),
        ("FP32", [], r"inputs\[0\]\.shape"),
        ("FP32", [-1, 2], r"inputs\[0\]\.shape"),
        ("FP32", [1] * 9, r"inputs\[0\]\.shape"),
    ],
)
def test_bad_datatypes_and_shapes_name_the_field(
    datatype: str, shape: list[int], field: str
) -> None:
    request = oip.ModelInferRequest(model_name="m")
    request.inputs.add(name="input", datatype=datatype, shape=shape)
    with pytest.raises(InvalidTensor, match=f"^{field}: "):
        oip_tensors.read_input(request, 0)


def test_raw_entries_are_one_per_input() -> None:
    request = oip.ModelInferRequest(model_name="m", raw_input_contents=[b"", b""])
    request.inputs.add(name="input", datatype="FP32", shape=[0])
    with pytest.raises(InvalidTensor, match=r"^raw_input_contents: has 2 entries for 1 inputs"):
        oip_tensors.check_raw_count(request)
