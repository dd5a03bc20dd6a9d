"""What one request may cost, refused before any work starts, through the real server: every
string field has a length limit, error messages stay short whatever the client sent, and each
refusal names the field and the limit."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import ServerThread, server_settings, wait_until
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sidelight.client import explain_request
from sidelight.settings import JobSettings, QueueSettings
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


# -- what a request may cost, on a server with tight limits ---------------------------------

TIGHT_EVALUATIONS = 1000
TIGHT_JOB_EVALUATIONS = 5000
TIGHT_RPCS = 4


@pytest.fixture(scope="module")
def tight(model_repository: Path) -> Iterator[ServerThread]:
    settings = replace(
        server_settings(model_repository),
        max_receive_message_bytes=64 << 10,
        max_concurrent_rpcs=TIGHT_RPCS,
        max_evaluations_per_request=TIGHT_EVALUATIONS,
        # No worker: jobs stay QUEUED, so the queue's caps and long streams can be seen.
        jobs=JobSettings(
            embedded_workers=0,
            max_evaluations_per_job=TIGHT_JOB_EVALUATIONS,
            queue=QueueSettings(max_queued_jobs=2),
        ),
    )
    server = ServerThread(settings)
    yield server
    server.stop()


@pytest.fixture
def tight_stub(tight: ServerThread) -> Iterator[pb_grpc.ExplainerStub]:
    with tight.channel() as channel:
        yield pb_grpc.ExplainerStub(channel)


def test_a_message_over_the_receive_limit_is_refused(tight_stub: pb_grpc.ExplainerStub) -> None:
    big = explain_request("digits", digits(300), "saliency")  # 300 x 256 bytes > 64 KiB
    with pytest.raises(grpc.RpcError) as raised:
        tight_stub.Explain(big, timeout=30)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_request_costing_too_many_evaluations_is_refused_before_it_runs(
    tight_stub: pb_grpc.ExplainerStub,
) -> None:
    over = explain_request("digits", digits(11), "integrated_gradients", params={"n_steps": 100})
    details = refused(tight_stub.Explain, over)
    assert "params.n_steps" in details and str(TIGHT_EVALUATIONS) in details
    within = explain_request("digits", digits(10), "integrated_gradients", params={"n_steps": 100})
    assert tight_stub.Explain(within, timeout=60).quality.model_evaluations > 0
    job = explain_request("digits", digits(1), "saliency", params={"max_evaluations": 6000})
    details = refused(tight_stub.SubmitJob, job)
    assert "params.max_evaluations" in details and str(TIGHT_JOB_EVALUATIONS) in details


def test_a_full_job_queue_refuses_with_a_retry_delay_and_rpcs_are_capped(
    tight: ServerThread, tight_stub: pb_grpc.ExplainerStub
) -> None:
    request = explain_request("digits", digits(1), "saliency")
    jobs = [tight_stub.SubmitJob(request, timeout=10).job_id for _ in range(2)]
    with pytest.raises(grpc.RpcError) as full:
        tight_stub.SubmitJob(request, timeout=10)
    assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "2 jobs" in str(full.value.details())
    trailing = dict(full.value.trailing_metadata() or ())
    assert float(trailing["retry-after"]) > 0
    # RPCs at once are capped: streams that stay open (the jobs never start) fill the server.
    in_flight = tight.service.metrics.rpc_in_flight.labels("WatchJob")
    watches = [tight_stub.WatchJob(pb.GetJobRequest(job_id=jobs[0])) for _ in range(TIGHT_RPCS)]
    try:
        wait_until(lambda: in_flight._value.get() >= TIGHT_RPCS, 10, "the streams to be open")
        with pytest.raises(grpc.RpcError) as busy:
            tight_stub.ListModels(pb.ListModelsRequest(), timeout=10)
        assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert float(dict(busy.value.trailing_metadata() or ())["retry-after"]) > 0
        # Health checks are not calls: a full server still answers its probes.
        with tight.channel() as probe:
            check = health_pb2.HealthCheckRequest(service="")
            status = health_pb2_grpc.HealthStub(probe).Check(check, timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    finally:
        for watch in watches:
            watch.cancel()
    wait_until(lambda: in_flight._value.get() == 0, 10, "the streams to end")
    for job_id in jobs:
        tight_stub.CancelJob(pb.GetJobRequest(job_id=job_id), timeout=10)
    assert tight_stub.SubmitJob(request, timeout=10).job_id  # room again
