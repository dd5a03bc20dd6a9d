"""`sidelight sanity` as a job: SubmitSanityCheck through a real server and its embedded queue
and worker, and the CLI's --server mode. The job's report must be the one the checks compute in
this process for the same inputs and seed, and must show the paper's finding."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from conftest import ServerThread, server_settings, watch_job
from sidelight.cli import main
from sidelight.methods.catalog import METHODS, check_model
from sidelight.models.registry import ModelRegistry
from sidelight.quality.sanity import randomization_test
from sidelight.settings import JobSettings
from sidelight.transport.codec import tensor_to_proto
from sidelight.v1 import explainer_pb2 as pb
from sidelight.v1 import explainer_pb2_grpc as pb_grpc
from sklearn.datasets import load_digits

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(model_repository: Path) -> Iterator[ServerThread]:
    settings = replace(server_settings(model_repository), jobs=JobSettings(embedded_workers=1))
    running = ServerThread(settings)
    yield running
    running.stop()


@pytest.fixture
def stub(server: ServerThread) -> Iterator[pb_grpc.ExplainerStub]:
    with server.channel() as channel:
        yield pb_grpc.ExplainerStub(channel)  # type: ignore[no-untyped-call]


def digits(count: int) -> np.ndarray:
    return (load_digits().images[-count:] / 16.0).astype(np.float32)[:, None]


def test_a_sanity_job_reports_what_the_checks_compute_in_process(
    stub: pb_grpc.ExplainerStub, model_repository: Path
) -> None:
    inputs = digits(16)
    request = pb.SanityCheckRequest(
        model="digits",
        inputs=tensor_to_proto(inputs),
        methods=["saliency", "guided_backprop"],
        seed=3,
    )
    job = stub.SubmitSanityCheck(request, timeout=30)
    assert job.method == "sanity" and job.model_version == "1"
    done = watch_job(stub, job.job_id, timeout=240)
    assert done.state == pb.JobState.SUCCEEDED, done.error
    assert done.progress.fraction == 1.0 and done.progress.model_evaluations > 0
    assert not done.HasField("result")
    report = json.loads(done.sanity_report_json)
    assert report["mode"] == "cascading" and report["instances"] == 16
    assert set(report["methods"]) == {"saliency", "guided_backprop"}

    registry = ModelRegistry.load(model_repository, [torch.device("cpu")], check_model)
    model = registry.get("digits").primary
    for name in ("saliency", "guided_backprop"):
        method = METHODS[name]
        expected = randomization_test(
            model, method, method.params_type(), torch.from_numpy(inputs), seed=3
        )
        rows = report["methods"][name]["rows"]
        assert [row["depth"] for row in rows] == [row.depth for row in expected.rows]
        got = np.array([row["spearman_abs_nonzero"] for row in rows])
        want = np.array([row.spearman_abs_nonzero for row in expected.rows])
        np.testing.assert_allclose(got, want, atol=1e-9)
        assert len(report["methods"][name]["maps"]) == len(rows)

    # The paper's finding, read off the job's report: after full cascading randomization,
    # Guided Backprop's maps still resemble the trained model's, saliency's do not.
    final = {n: m["rows"][-1]["spearman_abs_nonzero"] for n, m in report["methods"].items()}
    assert final["saliency"] < 0.5
    assert final["guided_backprop"] >= final["saliency"] + 0.2


@pytest.mark.parametrize(
    ("change", "code", "field"),
    [
        ({"methods": ["saliency", "nope"]}, grpc.StatusCode.NOT_FOUND, "methods[1]"),
        ({"methods": ["lime"]}, grpc.StatusCode.INVALID_ARGUMENT, "methods[0]"),
        ({"mode": "sideways"}, grpc.StatusCode.INVALID_ARGUMENT, "mode"),
        ({"model": "nope"}, grpc.StatusCode.NOT_FOUND, "model"),
        (
            {"inputs": tensor_to_proto(np.zeros((2, 3), np.float32))},
            grpc.StatusCode.INVALID_ARGUMENT,
            "inputs",
        ),
    ],
)
def test_a_bad_sanity_job_is_refused_naming_the_field_and_nothing_is_queued(
    stub: pb_grpc.ExplainerStub,
    server: ServerThread,
    change: dict,
    code: grpc.StatusCode,
    field: str,
) -> None:
    fields = {"model": "digits", "inputs": tensor_to_proto(digits(2)), "methods": ["saliency"]}
    queue = server.service.jobs
    assert queue is not None
    before = queue.stats().length
    with pytest.raises(grpc.RpcError) as caught:
        stub.SubmitSanityCheck(pb.SanityCheckRequest(**(fields | change)), timeout=30)
    assert caught.value.code() == code
    assert field in (caught.value.details() or "")
    assert queue.stats().length == before


def test_the_cli_runs_the_checks_as_a_job_with_server(
    server: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "sanity",
            "--server",
            server.address,
            "--model",
            "digits",
            "--methods",
            "saliency,grad_cam",
            "--samples",
            "8",
            "--out",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "SUCCEEDED" in out and "features_0_conv2d" in out
    report = json.loads((tmp_path / "sanity-digits-cascading.json").read_text())
    assert set(report["methods"]) == {"saliency", "grad_cam"} and report["failed"] == []
    assert (tmp_path / "sanity-digits-cascading.png").stat().st_size > 1000
