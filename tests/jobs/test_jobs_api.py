"""Jobs through a real server on a free port, with the embedded default: the in-process queue
and a worker thread in the server. Submit, watch, get, cancel; deadline, budget, idempotent
submit; bad input refused before anything is queued."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import ServerThread, server_settings, wait_until, watch_job
from sidelight.client import explain_request, to_array
from sidelight.settings import JobSettings
from sidelight.v1 import explainer_pb2 as pb
from sidelight.v1 import explainer_pb2_grpc as pb_grpc
from sklearn.datasets import load_breast_cancer, load_digits


def cancer_rows(count: int) -> np.ndarray:
    return load_breast_cancer().data[400 : 400 + count].astype(np.float32)


def digit_images(count: int) -> np.ndarray:
    return (load_digits().images[1500 : 1500 + count] / 16.0).astype(np.float32)[:, None]


@pytest.fixture(scope="module")
def job_server(model_repository: Path) -> Iterator[ServerThread]:
    settings = replace(server_settings(model_repository), jobs=JobSettings(embedded_workers=1))
    running = ServerThread(settings)
    yield running
    running.stop()


@pytest.fixture
def stub(job_server: ServerThread) -> Iterator[pb_grpc.ExplainerStub]:
    with job_server.channel() as channel:
        yield pb_grpc.ExplainerStub(channel)  # type: ignore[no-untyped-call]


def submit(
    stub: pb_grpc.ExplainerStub, model: str, inputs: np.ndarray, method: str, **kw: object
) -> pb.Job:
    return stub.SubmitJob(explain_request(model, inputs, method, **kw), timeout=30)  # type: ignore[arg-type]


def wait(stub: pb_grpc.ExplainerStub, job_id: str, timeout: float = 120) -> pb.Job:
    return watch_job(stub, job_id, timeout)


def test_a_kernel_shap_job_runs_to_a_result_that_sums_to_the_gap(
    stub: pb_grpc.ExplainerStub,
) -> None:
    rows = cancer_rows(3)
    job = submit(stub, "breast_cancer", rows, "kernel_shap", params={"n_samples": 256, "seed": 5})
    assert job.state in (pb.JobState.QUEUED, pb.JobState.RUNNING, pb.JobState.SUCCEEDED)
    assert job.model == "breast_cancer" and job.model_version == "1"
    done = wait(stub, job.job_id)
    assert done.state == pb.JobState.SUCCEEDED, done.error
    result = done.result
    assert result.method == "kernel_shap" and not result.quality.partial
    attributions = to_array(result.attributions)
    assert attributions.shape == (3, 30)
    assert result.quality.seed == 5
    assert max(abs(e) for e in result.quality.completeness_error) < 1e-5
    assert done.progress.fraction == 1.0
    assert done.progress.model_evaluations == result.quality.model_evaluations > 3 * 256
    assert done.started_at >= done.submitted_at > 0 and done.finished_at >= done.started_at

    again = stub.Explain(
        explain_request("breast_cancer", rows, "saliency"), timeout=30
    )  # the sync path is unaffected
    assert to_array(again.outputs).shape == (3, 2)
    np.testing.assert_allclose(to_array(result.outputs), to_array(again.outputs), atol=1e-6)


def test_the_same_seed_gives_the_same_result_bit_for_bit(stub: pb_grpc.ExplainerStub) -> None:
    images = digit_images(2)
    params = {"n_samples": 128, "seed": 77}
    first = wait(stub, submit(stub, "digits", images, "kernel_shap", params=params).job_id)
    second = wait(stub, submit(stub, "digits", images, "kernel_shap", params=params).job_id)
    assert first.job_id != second.job_id
    assert first.result.attributions.data == second.result.attributions.data


def test_watch_streams_progress_until_the_end(stub: pb_grpc.ExplainerStub) -> None:
    images = digit_images(2)
    job = submit(stub, "digits", images, "kernel_shap", params={"n_samples": 1024, "seed": 1})
    updates = list(stub.WatchJob(pb.GetJobRequest(job_id=job.job_id), timeout=120))
    assert updates[-1].state == pb.JobState.SUCCEEDED
    fractions = [u.progress.fraction for u in updates if u.state == pb.JobState.RUNNING]
    assert len(fractions) >= 2, [pb.JobState.Name(u.state) for u in updates]
    assert fractions == sorted(fractions) and fractions[0] < fractions[-1] <= 1
    evaluations = [u.progress.model_evaluations for u in updates]
    assert evaluations == sorted(evaluations)


def test_the_same_request_id_returns_the_same_job(stub: pb_grpc.ExplainerStub) -> None:
    rows = cancer_rows(1)
    first = submit(
        stub, "breast_cancer", rows, "kernel_shap", request_id="order-17", params={"n_samples": 64}
    )
    again = submit(
        stub, "breast_cancer", rows, "kernel_shap", request_id="order-17", params={"n_samples": 64}
    )
    assert again.job_id == first.job_id
    with pytest.raises(grpc.RpcError) as refused:
        submit(stub, "breast_cancer", rows * 2, "kernel_shap", request_id="order-17")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_id" in refused.value.details() and first.job_id in refused.value.details()
    assert wait(stub, first.job_id).state == pb.JobState.SUCCEEDED


def test_a_budget_stops_the_job_with_a_partial_result(stub: pb_grpc.ExplainerStub) -> None:
    rows = cancer_rows(2)
    job = submit(
        stub,
        "breast_cancer",
        rows,
        "kernel_shap",
        params={"n_samples": 4096, "max_evaluations": 20_000, "seed": 2},
    )
    done = wait(stub, job.job_id)
    assert done.state == pb.JobState.SUCCEEDED and done.partial
    quality = done.result.quality
    assert quality.partial and quality.stopped_by == "budget"
    assert quality.model_evaluations <= 20_000 + 2 + 32  # the inputs and references come first
    assert done.progress.fraction < 1.0
    assert max(abs(e) for e in quality.completeness_error) < 1e-5  # still sums to the gap


def test_a_deadline_stops_the_job_with_a_partial_result(stub: pb_grpc.ExplainerStub) -> None:
    images = digit_images(8)
    job = submit(
        stub,
        "digits",
        images,
        "kernel_shap",
        params={"n_samples": 1 << 20, "deadline_seconds": 1.5, "seed": 3},
    )
    started = time.monotonic()
    done = wait(stub, job.job_id)
    assert time.monotonic() - started < 30
    assert done.state == pb.JobState.SUCCEEDED and done.partial
    assert done.result.quality.stopped_by == "deadline"
    assert to_array(done.result.attributions).shape == images.shape


def test_cancel_stops_a_running_job(stub: pb_grpc.ExplainerStub) -> None:
    images = digit_images(8)
    job = submit(stub, "digits", images, "kernel_shap", params={"n_samples": 1 << 20})
    wait_until(
        lambda: stub.GetJob(pb.GetJobRequest(job_id=job.job_id)).state == pb.JobState.RUNNING,
        30,
        "the job to start",
    )
    cancelled = stub.CancelJob(pb.GetJobRequest(job_id=job.job_id), timeout=10)
    assert cancelled.state in (pb.JobState.RUNNING, pb.JobState.CANCELLED)
    done = wait(stub, job.job_id, timeout=30)
    assert done.state == pb.JobState.CANCELLED
    assert not done.HasField("result")


def test_sync_methods_run_as_jobs_too(stub: pb_grpc.ExplainerStub) -> None:
    images = digit_images(2)
    done = wait(stub, submit(stub, "digits", images, "integrated_gradients").job_id)
    assert done.state == pb.JobState.SUCCEEDED
    reply = stub.Explain(explain_request("digits", images, "integrated_gradients"), timeout=30)
    np.testing.assert_allclose(
        to_array(done.result.attributions), to_array(reply.attributions), atol=1e-6
    )


@pytest.mark.parametrize(
    ("method", "params", "inputs", "field"),
    [
        ("kernel_shap", {"n_samples": 1}, None, "params.n_samples"),
        ("kernel_shap", {"deadline_seconds": -1}, None, "params.deadline_seconds"),
        ("kernel_shap", {"max_evaluations": 2.5}, None, "params.max_evaluations"),
        ("kernel_shap", {"reference": "nowhere"}, None, "params.reference"),
        ("exact_shapley", {}, None, "method"),  # not offered for 30 features
        ("kernel_shap", {}, np.full((1, 30), np.nan, dtype=np.float32), "inputs.data"),
        ("kernel_shap", {}, np.zeros((1, 29), dtype=np.float32), "inputs.shape"),
    ],
)
def test_bad_submissions_name_the_field_and_queue_nothing(
    stub: pb_grpc.ExplainerStub,
    job_server: ServerThread,
    method: str,
    params: dict[str, object],
    inputs: np.ndarray | None,
    field: str,
) -> None:
    before = job_server.service.jobs.stats().length
    rows = cancer_rows(1) if inputs is None else inputs
    with pytest.raises(grpc.RpcError) as refused:
        submit(stub, "breast_cancer", rows, method, params=params)
    assert refused.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    assert refused.value.details().startswith(field), refused.value.details()
    assert job_server.service.jobs.stats().length == before


def test_async_methods_are_refused_by_explain_and_unknown_jobs_are_not_found(
    stub: pb_grpc.ExplainerStub,
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        stub.Explain(explain_request("breast_cancer", cancer_rows(1), "kernel_shap"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "SubmitJob" in refused.value.details()
    for call in (stub.GetJob, stub.CancelJob):
        with pytest.raises(grpc.RpcError) as missing:
            call(pb.GetJobRequest(job_id="0123abcd"), timeout=10)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as bad:
            call(pb.GetJobRequest(job_id="../etc"), timeout=10)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as streamed:
        list(stub.WatchJob(pb.GetJobRequest(job_id="0123abcd"), timeout=10))
    assert streamed.value.code() == grpc.StatusCode.NOT_FOUND


def test_list_models_marks_the_job_methods(stub: pb_grpc.ExplainerStub) -> None:
    models = {m.name: m for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models}
    modes = {m.name: m.mode for m in models["digits"].methods}
    assert modes["kernel_shap"] == "async" and modes["exact_shapley"] == "async"
    assert modes["saliency"] == "sync"


def test_an_onnx_model_serves_jobs(stub: pb_grpc.ExplainerStub) -> None:
    rows = cancer_rows(2)
    params = {"n_samples": 128, "seed": 8}
    from_onnx = wait(
        stub, submit(stub, "breast_cancer_onnx", rows, "kernel_shap", params=params).job_id
    )
    from_torch = wait(
        stub, submit(stub, "breast_cancer", rows, "kernel_shap", params=params).job_id
    )
    assert from_onnx.state == pb.JobState.SUCCEEDED, from_onnx.error
    np.testing.assert_allclose(
        to_array(from_onnx.result.attributions),
        to_array(from_torch.result.attributions),
        atol=1e-5,
    )
    with pytest.raises(grpc.RpcError) as refused:
        stub.Explain(explain_request("breast_cancer_onnx", rows, "saliency"), timeout=10)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND  # not offered: no gradients


def test_job_metrics_are_exported(stub: pb_grpc.ExplainerStub, job_server: ServerThread) -> None:
    done = wait(
        stub, submit(stub, "breast_cancer", cancer_rows(1), "lime", params={"n_samples": 64}).job_id
    )
    assert done.state == pb.JobState.SUCCEEDED
    assert len(done.result.quality.local_fidelity) == 1
    port = job_server.service.endpoints.metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples["sidelight_job_queue_up"] == 1
    assert samples['sidelight_jobs{state="SUCCEEDED"}'] >= 1
    assert samples["sidelight_job_queue_pending"] == 0
    assert "sidelight_job_queue_lag" in samples and "sidelight_job_dead_letters" in samples
    assert samples["sidelight_job_queue_oldest_waiting_seconds"] >= 0
    key = 'sidelight_job_deliveries_total{method="lime",model="breast_cancer",outcome="succeeded"}'
    assert samples[key] >= 1
    assert (
        samples[
            'sidelight_job_duration_seconds_bucket{le="3600.0",method="lime",model="breast_cancer",outcome="succeeded"}'
        ]
        >= 1
    )
    assert (
        samples['sidelight_job_model_evaluations_count{method="lime",model="breast_cancer"}'] >= 1
    )


def test_a_job_can_carry_its_faithfulness(stub: pb_grpc.ExplainerStub) -> None:
    images = digit_images(4)
    params = {"n_samples": 256, "seed": 5, "evaluate": ["deletion", "insertion"]}
    done = wait(stub, submit(stub, "digits", images, "kernel_shap", params=params).job_id)
    assert done.state == pb.JobState.SUCCEEDED, done.error
    faithfulness = done.result.quality.faithfulness
    assert len(faithfulness.deletion_auc) == len(faithfulness.random_insertion_auc) == 4
    assert faithfulness.reference == "blur" and not faithfulness.infidelity
    assert np.mean(faithfulness.deletion_auc) < np.mean(faithfulness.random_deletion_auc)
    plain = wait(
        stub, submit(stub, "digits", images, "kernel_shap", params={"n_samples": 64}).job_id
    )
    assert not plain.result.quality.HasField("faithfulness")
    with pytest.raises(grpc.RpcError) as refused:
        submit(stub, "digits", images, "kernel_shap", params={"evaluate": ["accuracy"]})
    assert refused.value.details().startswith("params.evaluate[0]")
