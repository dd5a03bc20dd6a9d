"""The Evaluate RPC through a real server: the figures it returns are the curves and scores
computed directly, and bad requests name their field."""

from __future__ import annotations

import time
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from conftest import ServerThread, wait_until
from google.protobuf import struct_pb2
from sidelight.client import explain_request, to_array
from sidelight.models.registry import ModelRegistry
from sidelight.quality.curves import Curve, Reference, curve, element_scores
from sidelight.transport import codec
from sidelight.v1 import explainer_pb2 as pb
from sidelight.v1 import explainer_pb2_grpc as pb_grpc
from sklearn.datasets import load_breast_cancer, load_digits


def digit_images(count: int) -> np.ndarray:
    return (load_digits().images[1500 : 1500 + count] / 16.0).astype(np.float32)[:, None]


def evaluate_request(
    model: str, inputs: np.ndarray, attributions: np.ndarray, **kw: Any
) -> pb.EvaluateRequest:
    params = kw.pop("params", None)
    message = pb.EvaluateRequest(
        model=model,
        inputs=codec.tensor_to_proto(inputs),
        attributions=codec.tensor_to_proto(attributions),
        **kw,
    )
    if params:
        struct = struct_pb2.Struct()
        struct.update(params)
        message.params.CopyFrom(struct)
    return message


@pytest.fixture
def stub(server: ServerThread) -> Any:
    with server.channel() as channel:
        yield pb_grpc.ExplainerStub(channel)  # type: ignore[no-untyped-call]


def test_evaluate_returns_the_curves_computed_directly(stub: Any, registry: ModelRegistry) -> None:
    images = digit_images(4)
    explained = stub.Explain(explain_request("digits", images, "integrated_gradients"), timeout=60)
    maps = to_array(explained.attributions)
    reply = stub.Evaluate(
        evaluate_request("digits", images, maps, metrics=["deletion", "insertion", "infidelity"]),
        timeout=120,
    )
    assert list(reply.targets) == list(explained.targets)
    faithfulness = reply.faithfulness
    assert faithfulness.reference == "blur" and faithfulness.steps == 16
    model = registry.get("digits").primary
    x, a = torch.from_numpy(images), torch.from_numpy(maps)
    targets = torch.tensor(list(reply.targets))
    for kind, found in (
        (Curve.DELETION, faithfulness.deletion_auc),
        (Curve.INSERTION, faithfulness.insertion_auc),
    ):
        direct = curve(model, x, element_scores(a, x), targets, kind, reference=Reference.BLUR)
        np.testing.assert_allclose(list(found), direct.auc.numpy(), atol=1e-9)
    assert np.mean(faithfulness.deletion_auc) < np.mean(faithfulness.random_deletion_auc)
    assert np.mean(faithfulness.insertion_auc) > np.mean(faithfulness.random_insertion_auc)
    assert len(faithfulness.infidelity) == 4 and not faithfulness.max_sensitivity
    assert reply.model_evaluations > 0


def test_max_sensitivity_reruns_the_method(stub: Any) -> None:
    rows = load_breast_cancer().data[400:403].astype(np.float32)
    explained = stub.Explain(explain_request("breast_cancer", rows, "saliency"), timeout=60)
    reply = stub.Evaluate(
        evaluate_request(
            "breast_cancer",
            rows,
            to_array(explained.attributions),
            metrics=["max_sensitivity"],
            method="saliency",
        ),
        timeout=120,
    )
    assert len(reply.faithfulness.max_sensitivity) == 3
    assert all(v >= 0 for v in reply.faithfulness.max_sensitivity)
    assert reply.faithfulness.reference == "baseline"


@pytest.mark.parametrize(
    ("model", "change", "field"),
    [
        ("digits", {"attributions": np.zeros((2, 1, 4, 4), np.float32)}, "attributions.shape"),
        ("digits", {"metrics": ["deletion", "accuracy"]}, "metrics[1]"),
        ("digits", {"metrics": ["max_sensitivity"]}, "method"),
        ("digits", {"metrics": ["max_sensitivity"], "method": "kernel_shap"}, "method"),
        ("digits", {"steps": 1000}, "steps"),
        ("digits", {"reference": "noise"}, "reference"),
        ("breast_cancer", {"reference": "blur"}, "reference"),
        ("digits", {"targets": [10]}, "targets[0]"),
        (
            "digits",
            {"attributions": np.full((2, 1, 8, 8), np.nan, np.float32)},
            "attributions.data",
        ),
    ],
)
def test_bad_requests_name_the_field(
    stub: Any, model: str, change: dict[str, Any], field: str
) -> None:
    inputs = (
        digit_images(2) if model == "digits" else load_breast_cancer().data[:2].astype(np.float32)
    )
    fields: dict[str, Any] = {"attributions": np.ones_like(inputs), **change}
    attributions = fields.pop("attributions")
    with pytest.raises(grpc.RpcError) as refused:
        stub.Evaluate(evaluate_request(model, inputs, attributions, **fields), timeout=30)
    assert refused.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    assert refused.value.details().startswith(field), refused.value.details()


def costly_evaluate() -> pb.EvaluateRequest:
    """Max-sensitivity of IG with 4096 steps on 16 digits: 8 x 16 x 4096 rows forward and
    backward (minutes of CPU), in model calls of a fraction of a second."""
    images = digit_images(16)
    return evaluate_request(
        "digits",
        images,
        np.ones_like(images),
        metrics=["max_sensitivity"],
        method="integrated_gradients",
        params={"n_steps": 4096},
    )


def goes_idle() -> None:
    """Wait until this process (the server is a thread of it) spends under a fifth of a core
    for half a second: once the model call in progress has ended, if the work stopped. Work
    that goes on keeps one to two cores busy for minutes."""

    def idle() -> bool:
        before = time.process_time()
        time.sleep(0.5)
        return time.process_time() - before < 0.1

    wait_until(idle, 15, "the server to stop computing")


def test_cancelled_evaluate_calls_stop_their_work(stub: Any) -> None:
    calls = []
    for _ in range(3):  # one at a time: each cancelled call holds the guard until it stopped
        call = stub.Evaluate.future(costly_evaluate())
        time.sleep(0.5)
        call.cancel()
        calls.append(call)
    goes_idle()
    assert all(call.cancelled() for call in calls)
    images = digit_images(2)
    reply = stub.Evaluate(evaluate_request("digits", images, np.ones_like(images)), timeout=30)
    assert len(reply.faithfulness.deletion_auc) == 2  # and the next call runs


def test_an_evaluate_call_stops_at_its_deadline(stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as late:
        stub.Evaluate(costly_evaluate(), timeout=1.0)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    goes_idle()
