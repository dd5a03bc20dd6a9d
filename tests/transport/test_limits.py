"""What one request may cost, refused before any work starts, through the real server: every
string field has a length limit, error messages stay short whatever the client sent, and each
refusal names the field and the limit."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2
from sidelight.client import explain_request
from sidelight.v1 import explainer_pb2 as pb
from sidelight.v1 import explainer_pb2_grpc as pb_grpc
from sidelight.validation import STRING_LIMITS

INVALID = grpc.StatusCode.INVALID_ARGUMENT
HUGE = "x" * 1_000_000  # a megabyte: what a hostile caller sends where a name is expected
# The longest a status message may be: a field, its limit, a clipped echo of what was sent.
MAX_DETAILS = 600


def digits(n: int = 1) -> np.ndarray[Any, Any]:
    return np.random.default_rng(1).random((n, 1, 8, 8), dtype=np.float32)


def params(**values: Any) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


def refused(call: Any, request: Any) -> str:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=30)
    assert raised.value.code() == INVALID, raised.value.details()
    details = str(raised.value.details())
    assert len(details) < MAX_DETAILS, details[:200]
    return details


@pytest.mark.parametrize("field", ["model", "model_version", "method", "request_id", "subject_id"])
def test_each_string_of_explain_and_submit_has_a_limit(channel: grpc.Channel, field: str) -> None:
    stub = pb_grpc.ExplainerStub(channel)
    limit = STRING_LIMITS[field]
    request = explain_request("digits", digits(), "saliency")
    setattr(request, field, "y" * (limit + 1))
    for call in (stub.Explain, stub.SubmitJob):
        details = refused(call, request)
        assert field in details and str(limit) in details
    setattr(request, field, HUGE)
    refused(stub.Explain, request)


def test_predict_evaluate_and_sanity_check_strings_have_limits(channel: grpc.Channel) -> None:
    stub = pb_grpc.ExplainerStub(channel)
    x = digits()
    inputs = pb.Tensor(dtype="FP32", shape=list(x.shape), data=x.tobytes())
    details = refused(
        stub.Predict, pb.PredictRequest(model="digits", inputs=inputs, subject_id=HUGE)
    )
    assert "subject_id" in details
    evaluate = pb.EvaluateRequest(
        model="digits", inputs=inputs, attributions=inputs, metrics=["deletion", HUGE]
    )
    assert "metrics[1]" in refused(stub.Evaluate, evaluate)
    evaluate = pb.EvaluateRequest(
        model="digits", inputs=inputs, attributions=inputs, reference=HUGE
    )
    assert "reference" in refused(stub.Evaluate, evaluate)
    sanity = pb.SanityCheckRequest(model="digits", inputs=inputs, methods=[HUGE])
    assert "methods[0]" in refused(stub.SubmitSanityCheck, sanity)
    sanity = pb.SanityCheckRequest(model="digits", inputs=inputs, mode=HUGE)
    assert "mode" in refused(stub.SubmitSanityCheck, sanity)


def test_params_are_bounded_and_their_keys_not_echoed_whole(channel: grpc.Channel) -> None:
    stub = pb_grpc.ExplainerStub(channel)
    request = explain_request("digits", digits(), "integrated_gradients")
    request.params.CopyFrom(params(**{HUGE: 1}))
    assert "params" in refused(stub.Explain, request)
    request.params.CopyFrom(params(baseline=HUGE))
    assert "params" in refused(stub.Explain, request)
    request.params.CopyFrom(params(**{"k" * 300: 1}))  # within the size limit, unknown
    details = refused(stub.Explain, request)
    assert "params." in details and "k" * 300 not in details


def test_ids_looked_up_are_bounded(channel: grpc.Channel) -> None:
    stub = pb_grpc.ExplainerStub(channel)
    assert "job_id" in refused(stub.GetJob, pb.GetJobRequest(job_id=HUGE))
    assert "record_id" in refused(stub.GetAuditRecord, pb.GetAuditRecordRequest(record_id=HUGE))


def test_the_server_answers_well_after_the_refusals(channel: grpc.Channel) -> None:
    good = pb_grpc.ExplainerStub(channel).Explain(
        explain_request(
            "digits", digits(), "saliency", request_id="r" * STRING_LIMITS["request_id"]
        )
    )
    assert good.request_id == "r" * STRING_LIMITS["request_id"]

