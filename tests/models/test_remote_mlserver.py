"""A remote model served by a real MLServer 1.7.1 (mlserver-sklearn, Open Inference Protocol
gRPC), beside the same model loaded locally from a torch.export file, in one Sidelight server.

The remote model's predictions and attributions must equal the local model's (exact_shapley to
float precision; kernel_shap, lime and occlusion for the same seed), and predictions also equal
a plain numpy computation from the fitted coefficients. Then MLServer is stopped in the middle of
a job: the job ends FAILED with the endpoint's error, health and metrics show the endpoint down
while the server and its local models keep serving, and all comes back when MLServer does.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import RedisServer, ServerThread, server_settings, wait_until, watch_job
from grpc_health.v1 import health_pb2, health_pb2_grpc
from remote_support import (
    Logistic,
    MlServer,
    background_rows,
    train_logistic,
    write_local,
    write_remote,
)
from sidelight.client import explain_request, to_array
from sidelight.oip import grpc_service_pb2 as oip
from sidelight.oip import grpc_service_pb2_grpc as oip_grpc
from sidelight.settings import JobSettings
from sidelight.transport import codec
from sidelight.v1 import explainer_pb2 as pb
from sidelight.v1 import explainer_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow

LOCAL, REMOTE = "cancer_local", "cancer_remote"
# The same endpoint in calls of 16 rows, one at a time: a job of 50 rows is ~9,500 calls (many
# seconds), long enough to stop MLServer in its middle. SLOW gives up after 2 retries (~0.3 s),
# PATIENT after 12 (~17 s of backoff: MLServer restarts within that).
SLOW, PATIENT = "cancer_slow", "cancer_patient"
RETRIES, PATIENT_RETRIES = 2, 12
SMALL_CALLS = {"batch_rows": 16, "max_concurrency": 1}


@pytest.fixture(scope="module")
def logistic(tmp_path_factory: pytest.TempPathFactory) -> Logistic:
    return train_logistic(tmp_path_factory.mktemp("peer-model"))


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory: pytest.TempPathFactory, logistic: Logistic) -> Iterator[MlServer]:
    trained = tmp_path_factory.getbasetemp() / "peer-model0"
    server = MlServer(tmp_path_factory.mktemp("mlserver"), trained)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def repository(
    tmp_path_factory: pytest.TempPathFactory, logistic: Logistic, mlserver: MlServer
) -> Path:
    root = tmp_path_factory.mktemp("remote-repository")
    write_local(root / LOCAL, logistic)
    write_remote(root / REMOTE, logistic, mlserver.grpc_port, retries=RETRIES, batch_rows=256)
    write_remote(root / SLOW, logistic, mlserver.grpc_port, retries=RETRIES, **SMALL_CALLS)
    write_remote(
        root / PATIENT, logistic, mlserver.grpc_port, retries=PATIENT_RETRIES, **SMALL_CALLS
    )
    return root


@pytest.fixture(scope="module")
def sidelight(repository: Path) -> Iterator[ServerThread]:
    settings = replace(server_settings(repository), jobs=JobSettings(embedded_workers=1))
    running = ServerThread(settings)
    yield running
    running.stop()


@pytest.fixture
def stub(sidelight: ServerThread) -> Iterator[pb_grpc.ExplainerStub]:
    with sidelight.channel() as channel:
        yield pb_grpc.ExplainerStub(channel)  # type: ignore[no-untyped-call]


def predict(stub: pb_grpc.ExplainerStub, model: str, rows: np.ndarray) -> np.ndarray:
    request = pb.PredictRequest(model=model, inputs=codec.tensor_to_proto(rows))
    return to_array(stub.Predict(request, timeout=30).outputs)


def job(stub: pb_grpc.ExplainerStub, model: str, rows: np.ndarray, method: str, **params: object):  # type: ignore[no-untyped-def]
    submitted = stub.SubmitJob(explain_request(model, rows, method, params=params), timeout=30)
    return watch_job(stub, submitted.job_id, timeout=180)


def metric_samples(sidelight: ServerThread) -> dict[str, float]:
    port = sidelight.service.endpoints.metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def health(sidelight: ServerThread, service: str) -> int:
    with sidelight.channel() as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        try:
            return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status)
        except grpc.RpcError:
            return -1


def model_ready(sidelight: ServerThread, model: str) -> bool:
    """Open Inference Protocol ModelReady, as Triton's and KServe's clients ask it."""
    with sidelight.channel() as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        return bool(stub.ModelReady(oip.ModelReadyRequest(name=model), timeout=5).ready)


def test_predict_on_the_remote_model_equals_the_local_model_and_numpy(
    stub: pb_grpc.ExplainerStub, logistic: Logistic
) -> None:
    rows = logistic.rows[:300]  # more rows than one call of 256: two calls, in parallel
    remote = predict(stub, REMOTE, rows)
    assert remote.shape == (300, 2)
    # Responses carry float32: equal to float32 precision (the models agree to 1e-15 in float64).
    np.testing.assert_array_equal(remote, predict(stub, LOCAL, rows))
    np.testing.assert_allclose(remote, logistic.probabilities(rows), rtol=0, atol=1e-7)


def test_exact_shapley_on_the_remote_model_equals_the_local_model(
    stub: pb_grpc.ExplainerStub, logistic: Logistic
) -> None:
    rows = logistic.rows[100:103]
    remote, local = (
        job(stub, REMOTE, rows, "exact_shapley"),
        job(stub, LOCAL, rows, "exact_shapley"),
    )
    assert remote.state == local.state == pb.JobState.SUCCEEDED, remote.error or local.error
    attributions = to_array(remote.result.attributions)
    assert attributions.shape == (3, 8) and np.abs(attributions).max() > 0.01
    np.testing.assert_allclose(
        attributions, to_array(local.result.attributions), rtol=1e-6, atol=1e-7
    )
    assert remote.result.quality.model_evaluations == local.result.quality.model_evaluations
    # Efficiency, against the numpy model: each row's values sum to f(x) minus the mean of f
    # over the background rows (stored as float32 by the loader), for the explained class.
    references = background_rows(logistic).astype(np.float32).astype(np.float64)
    targets = np.asarray(remote.result.targets)
    gaps = logistic.probabilities(rows)[np.arange(3), targets] - (
        logistic.probabilities(references)[:, targets].mean(0)
    )
    np.testing.assert_allclose(attributions.sum(1), gaps, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("kernel_shap", {"n_samples": 128, "seed": 11}),
        ("lime", {"n_samples": 300, "seed": 11}),
        ("occlusion", {}),
    ],
)
def test_sampled_methods_on_the_remote_model_equal_the_local_model_for_the_same_seed(
    stub: pb_grpc.ExplainerStub, logistic: Logistic, method: str, params: dict[str, object]
) -> None:
    rows = logistic.rows[200:204]
    remote, local = (
        job(stub, REMOTE, rows, method, **params),
        job(stub, LOCAL, rows, method, **params),
    )
    assert remote.state == local.state == pb.JobState.SUCCEEDED, remote.error or local.error
    attributions = to_array(remote.result.attributions)
    assert np.abs(attributions).max() > 1e-3
    np.testing.assert_allclose(
        attributions, to_array(local.result.attributions), rtol=1e-6, atol=1e-7
    )
    assert remote.result.quality.seed == local.result.quality.seed


def test_a_gradient_method_on_the_remote_model_is_failed_precondition(
    stub: pb_grpc.ExplainerStub, logistic: Logistic
) -> None:
    rows = logistic.rows[:2]
    for method in ("saliency", "grad_cam"):
        with pytest.raises(grpc.RpcError) as raised:
            stub.Explain(explain_request(REMOTE, rows, method), timeout=30)
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "model.pt2" in raised.value.details() and "remote.yaml" in raised.value.details()
    with pytest.raises(grpc.RpcError) as raised:
        stub.Explain(explain_request(REMOTE, rows, "no_such_method"), timeout=30)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    local = stub.Explain(explain_request(LOCAL, rows, "saliency"), timeout=30)
    assert to_array(local.attributions).shape == (2, 8)


def test_metrics_and_health_show_the_endpoint(
    stub: pb_grpc.ExplainerStub, sidelight: ServerThread, mlserver: MlServer, logistic: Logistic
) -> None:
    predict(stub, REMOTE, logistic.rows[:5])
    labels = f'endpoint="{mlserver.target}",model="{REMOTE}"'
    samples = metric_samples(sidelight)
    assert samples[f'sidelight_remote_calls_total{{code="OK",{labels}}}'] >= 1
    assert samples[f"sidelight_remote_rows_total{{{labels}}}"] >= 5
    assert samples[f"sidelight_remote_call_duration_seconds_count{{{labels}}}"] >= 1
    assert samples[f"sidelight_remote_up{{{labels}}}"] == 1
    assert (
        wait_until(lambda: health(sidelight, f"sidelight.remote.{REMOTE}") == 1, 10, "SERVING")
        and health(sidelight, "sidelight.v1.Explainer") == health_pb2.HealthCheckResponse.SERVING
    )


def submit(
    stub: pb_grpc.ExplainerStub, model: str, rows: np.ndarray, method: str, **params: object
) -> pb.Job:
    return stub.SubmitJob(explain_request(model, rows, method, params=params), timeout=30)  # type: ignore[no-any-return]


def evaluated(stub: pb_grpc.ExplainerStub, job_id: str) -> bool:
    """Whether the job has spent model evaluations (a round of calls is done)."""
    seen = stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10)
    return bool(seen.progress.model_evaluations > 0 and seen.state == pb.JobState.RUNNING)


def test_mlserver_stopped_mid_job_fails_the_job_with_the_endpoint_error_then_recovers(
    stub: pb_grpc.ExplainerStub, sidelight: ServerThread, mlserver: MlServer, logistic: Logistic
) -> None:
    # 50 rows x 254 coalitions (all of them, exactly) x 12 references, in ~9,500 calls.
    rows = logistic.rows[300:350]
    submitted = submit(stub, SLOW, rows, "kernel_shap", n_samples=1024, seed=3)
    wait_until(lambda: evaluated(stub, submitted.job_id), 60, "the job's first remote calls")
    mlserver.stop()
    done = watch_job(stub, submitted.job_id, timeout=120)
    assert done.state == pb.JobState.FAILED
    assert f"remote model {SLOW} at {mlserver.target}" in done.error
    # The calls cut by the shutdown (CANCELLED) and those refused after it were retried, then
    # the job failed with the endpoint's last answer.
    assert "UNAVAILABLE: failed to connect" in done.error
    assert f"after {RETRIES + 1} attempts" in done.error

    # The endpoint is down: its model is NOT_SERVING, the server and its local models are not.
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    wait_until(lambda: health(sidelight, f"sidelight.remote.{REMOTE}") == not_serving, 10, "down")
    assert health(sidelight, "sidelight.v1.Explainer") == health_pb2.HealthCheckResponse.SERVING
    assert not model_ready(sidelight, REMOTE)
    assert model_ready(sidelight, LOCAL)
    with pytest.raises(grpc.RpcError) as raised:
        predict(stub, REMOTE, rows)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert mlserver.target in raised.value.details()
    assert f"after {RETRIES + 1} attempts" in raised.value.details()
    np.testing.assert_allclose(predict(stub, LOCAL, rows), logistic.probabilities(rows), atol=1e-7)
    labels = f'endpoint="{mlserver.target}",model="{REMOTE}"'
    samples = metric_samples(sidelight)
    assert samples[f'sidelight_remote_calls_total{{code="UNAVAILABLE",{labels}}}'] >= RETRIES + 1
    assert samples[f"sidelight_remote_up{{{labels}}}"] == 0

    mlserver.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    wait_until(lambda: health(sidelight, f"sidelight.remote.{REMOTE}") == serving, 20, "back")
    assert model_ready(sidelight, REMOTE)
    np.testing.assert_allclose(
        predict(stub, REMOTE, rows), logistic.probabilities(rows), rtol=0, atol=1e-7
    )


def test_a_restart_of_mlserver_mid_job_is_bridged_by_retries(
    stub: pb_grpc.ExplainerStub, sidelight: ServerThread, mlserver: MlServer, logistic: Logistic
) -> None:
    """Retried where safe: the calls cut or refused while MLServer restarts are made again,
    and the job ends as if nothing had happened (equal to the local model's)."""
    rows = logistic.rows[400:420]  # ~3,800 calls of 16 rows
    labels = f'endpoint="{mlserver.target}",model="{PATIENT}"'
    failed_before = sum(
        value
        for key, value in metric_samples(sidelight).items()
        if key.startswith("sidelight_remote_calls_total") and labels in key and "OK" not in key
    )
    submitted = submit(stub, PATIENT, rows, "kernel_shap", n_samples=1024, seed=3)
    wait_until(lambda: evaluated(stub, submitted.job_id), 60, "the job's first remote calls")
    mlserver.stop()
    mlserver.start()
    done = watch_job(stub, submitted.job_id, timeout=180)
    assert done.state == pb.JobState.SUCCEEDED, done.error
    local = watch_job(stub, submit(stub, LOCAL, rows, "kernel_shap", n_samples=1024, seed=3).job_id)
    np.testing.assert_allclose(
        to_array(done.result.attributions),
        to_array(local.result.attributions),
        rtol=1e-6,
        atol=1e-7,
    )
    failed_after = sum(
        value
        for key, value in metric_samples(sidelight).items()
        if key.startswith("sidelight_remote_calls_total") and labels in key and "OK" not in key
    )
    assert failed_after > failed_before  # the outage was seen, and bridged


def test_with_redis_and_a_worker_process_the_job_ends_failed_with_the_endpoint_error(
    tmp_path_factory: pytest.TempPathFactory,
    repository: Path,
    mlserver: MlServer,
    logistic: Logistic,
) -> None:
    """The same through the production path: the API server queues on a real Redis, a
    `sidelight worker` process runs the job and calls MLServer; MLServer stops mid-job; the job
    ends FAILED in Redis with the endpoint's error, read back through the API server."""
    redis = RedisServer(tmp_path_factory.mktemp("redis"))
    api = ServerThread(replace(server_settings(repository), jobs=JobSettings(redis_url=redis.url)))
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sidelight.cli",
            "worker",
            "--model-repository",
            str(repository),
            "--redis-url",
            redis.url,
            "--processes",
            "1",
            "--metrics-port",
            "-1",
            "--torch-threads",
            "1",
            "--audit-dir",
            str(tmp_path_factory.mktemp("worker-audit")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with api.channel() as channel:
            stub = pb_grpc.ExplainerStub(channel)  # type: ignore[no-untyped-call]
            submitted = submit(stub, SLOW, logistic.rows[300:350], "kernel_shap", n_samples=1024)
            wait_until(lambda: evaluated(stub, submitted.job_id), 90, "the worker's first calls")
            mlserver.stop()
            try:
                done = watch_job(stub, submitted.job_id, timeout=120)
            finally:
                mlserver.start()
        assert done.state == pb.JobState.FAILED
        assert f"remote model {SLOW} at {mlserver.target}" in done.error
        assert f"after {RETRIES + 1} attempts" in done.error
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)
        api.stop()
        redis.kill()
