"""Every kind of bad input gets its status code and a message naming the field, through the real
server; the server keeps answering afterwards."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2
from sidelight.client import explain_request
from sidelight.transport import codec
from sidelight.v1 import explainer_pb2 as pb
from sidelight.v1 import explainer_pb2_grpc as pb_grpc

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def digits(n: int = 2) -> np.ndarray[Any, Any]:
    return np.random.default_rng(1).random((n, 1, 8, 8), dtype=np.float32)


def raw_request(**tensor: Any) -> pb.ExplainRequest:
    fields = {"dtype": "FP32", "shape": [1, 1, 8, 8], "data": digits(1).tobytes()} | tensor
    return pb.ExplainRequest(model="digits", method="saliency", inputs=pb.Tensor(**fields))


def nan_input() -> np.ndarray[Any, Any]:
    x = digits(3)
    x[2, 0, 4, 4] = np.nan
    return x


def inf_input() -> np.ndarray[Any, Any]:
    x = digits(2)
    x[1, 0, 0, 0] = np.inf
    return x


CASES = [
    # name, request, code, field named in the message
    ("unknown model", explain_request("nope", digits(), "saliency"), NOT_FOUND, "model"),
    (
        "unknown version",
        explain_request("digits", digits(), "saliency", model_version="7"),
        NOT_FOUND,
        "model_version",
    ),
    ("unknown method", explain_request("digits", digits(), "magic"), NOT_FOUND, "method"),
    (
        "method the model does not offer",
        explain_request("breast_cancer", np.zeros((1, 30), np.float32), "grad_cam"),
        NOT_FOUND,
        "method",
    ),
    (
        "wrong shape",
        explain_request("digits", np.zeros((2, 8, 8), np.float32), "saliency"),
        INVALID,
        "inputs.shape",
    ),
    (
        "wrong instance shape",
        explain_request("digits", np.zeros((2, 1, 8, 9), np.float32), "saliency"),
        INVALID,
        "inputs.shape",
    ),
    (
        "wrong dtype",
        explain_request("digits", digits().astype(np.float64), "saliency"),
        INVALID,
        "inputs.dtype",
    ),
    ("unknown dtype", raw_request(dtype="FP8"), INVALID, "inputs.dtype"),
    ("size mismatch", raw_request(data=b"\x00" * 10), INVALID, "inputs.data"),
    ("empty shape", raw_request(shape=[], data=b""), INVALID, "inputs.shape"),
    ("negative dim", raw_request(shape=[-1, 1, 8, 8], data=b""), INVALID, "inputs.shape"),
    (
        "no instance",
        explain_request("digits", np.zeros((0, 1, 8, 8), np.float32), "saliency"),
        INVALID,
        "inputs.shape",
    ),
    ("NaN", explain_request("digits", nan_input(), "saliency"), INVALID, "instance 2"),
    ("Inf", explain_request("digits", inf_input(), "saliency"), INVALID, "instance 1"),
    (
        "out of declared range",
        explain_request("digits", digits() + 5, "saliency"),
        INVALID,
        "range",
    ),
    (
        "target out of range",
        explain_request("digits", digits(), "saliency", targets=[3, 10]),
        INVALID,
        "targets[1]",
    ),
    (
        "negative target",
        explain_request("digits", digits(), "saliency", targets=[-1]),
        INVALID,
        "targets[0]",
    ),
    (
        "wrong number of targets",
        explain_request("digits", digits(3), "saliency", targets=[1, 2]),
        INVALID,
        "targets",
    ),
    (
        "unknown param",
        explain_request("digits", digits(), "saliency", params={"nope": 1}),
        INVALID,
        "params.nope",
    ),
    (
        "param out of bounds",
        explain_request("digits", digits(), "integrated_gradients", params={"n_steps": 0}),
        INVALID,
        "params.n_steps",
    ),
    (
        "param of the wrong type",
        explain_request("digits", digits(), "integrated_gradients", params={"n_steps": "many"}),
        INVALID,
        "params.n_steps",
    ),
    (
        "fractional integer param",
        explain_request("digits", digits(), "integrated_gradients", params={"n_steps": 2.5}),
        INVALID,
        "params.n_steps",
    ),
    (
        "unknown baseline",
        explain_request("digits", digits(), "integrated_gradients", params={"baseline": "x"}),
        INVALID,
        "params.baseline",
    ),
    (
        "noise base the model cannot run",
        explain_request(
            "tiny_torchscript",
            np.zeros((1, 4), np.float32),
            "smoothgrad",
            params={"base": "guided_backprop"},
        ),
        INVALID,
        "params.base",
    ),
    (
        "seed out of range",
        explain_request("digits", digits(), "smoothgrad", params={"seed": -3}),
        INVALID,
        "params.seed",
    ),
]


@pytest.mark.parametrize(
    ("request_message", "code", "field"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_explain_request(
    channel: grpc.Channel, request_message: pb.ExplainRequest, code: grpc.StatusCode, field: str
) -> None:
    stub = pb_grpc.ExplainerStub(channel)
    with pytest.raises(grpc.RpcError) as raised:
        stub.Explain(request_message, timeout=30)
    assert raised.value.code() == code, raised.value.details()
    assert field in raised.value.details()
    # The server is still up and answers a good request.
    good = stub.Explain(explain_request("digits", digits(1), "saliency"), timeout=30)
    assert list(good.attributions.shape) == [1, 1, 8, 8]


@pytest.mark.parametrize(
    ("message", "code", "field"),
    [
        (pb.PredictRequest(model="nope"), NOT_FOUND, "model"),
        (
            pb.PredictRequest(
                model="digits", inputs=pb.Tensor(dtype="FP32", shape=[1, 64], data=bytes(256))
            ),
            INVALID,
            "inputs.shape",
        ),
        (pb.PredictRequest(model="digits"), INVALID, "inputs.dtype"),
    ],
    ids=["unknown model", "wrong shape", "missing inputs"],
)
def test_bad_predict_request(
    channel: grpc.Channel, message: pb.PredictRequest, code: grpc.StatusCode, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        pb_grpc.ExplainerStub(channel).Predict(message, timeout=30)
    assert raised.value.code() == code
    assert field in raised.value.details()


def test_too_many_instances_per_request(channel: grpc.Channel, server: Any) -> None:
    limit = server.service.settings.max_instances_per_request
    big = np.zeros((limit + 1, 1, 8, 8), np.float32)
    with pytest.raises(grpc.RpcError) as raised:
        pb_grpc.ExplainerStub(channel).Explain(explain_request("digits", big, "saliency"))
    assert raised.value.code() == INVALID
    assert "inputs.shape" in raised.value.details()


def _with_params(message: Any, params: dict[str, Any]) -> Any:
    """`message` with a params Struct that may hold NaN or Inf (Struct.update keeps them)."""
    struct = struct_pb2.Struct()
    struct.update(params)
    message.params.CopyFrom(struct)
    return message


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("rpc", ["Explain", "SubmitJob", "Evaluate"])
def test_nan_or_inf_in_params_names_the_key(channel: grpc.Channel, rpc: str, value: float) -> None:
    stub = pb_grpc.ExplainerStub(channel)
    params = {"samples": 2, "nested": {"ok": 1.0, "noise_level": [0.1, value]}}
    x = digits(1)
    message: Any
    if rpc == "Evaluate":
        message = pb.EvaluateRequest(
            model="digits",
            inputs=codec.tensor_to_proto(x),
            attributions=codec.tensor_to_proto(x),
            metrics=["max_sensitivity"],
            method="smoothgrad",
        )
    else:
        message = explain_request("digits", x, "smoothgrad")
    with pytest.raises(grpc.RpcError) as raised:
        getattr(stub, rpc)(_with_params(message, params), timeout=30)
    assert raised.value.code() == INVALID, raised.value.details()
    assert "params.nested.noise_level[1]" in raised.value.details()
