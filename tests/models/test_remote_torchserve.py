"""A remote model served by a real TorchServe 0.12 over its gRPC inference API, beside the same
TorchScript file loaded locally, in one Sidelight server: predictions equal, and the image
perturbation methods (rise, occlusion, kernel_shap) equal for the same seed. TorchServe runs a
test handler that follows the body contract of Sidelight's client (torchserve_body_handler.py);
the end-to-end test with Sidelight's own TorchServe handler comes with that handler.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import grpc
import numpy as np
import pytest
import torch
from conftest import ServerThread, server_settings, watch_job
from sidelight.client import explain_request, to_array
from sidelight.settings import JobSettings
from sidelight.transport import codec
from sidelight.v1 import explainer_pb2 as pb
from sidelight.v1 import explainer_pb2_grpc as pb_grpc
from torchserve_support import (
    SHAPE,
    SoftmaxImage,
    TorchServe,
    write_local_image,
    write_remote_image,
    write_torchscript,
)

pytestmark = pytest.mark.slow

LOCAL, REMOTE = "digits_local", "digits_remote"


@pytest.fixture(scope="module")
def torchserve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    folder = tmp_path_factory.mktemp("torchserve")
    write_torchscript(folder / "model.pt")
    server = TorchServe(folder / "server", folder / "model.pt")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sidelight(
    tmp_path_factory: pytest.TempPathFactory, torchserve: TorchServe
) -> Iterator[ServerThread]:
    root = tmp_path_factory.mktemp("torchserve-repository")
    write_local_image(root / LOCAL, torchserve.folder.parent / "model.pt")
    write_remote_image(root / REMOTE, torchserve.grpc_port, batch_rows=300)
    running = ServerThread(replace(server_settings(root), jobs=JobSettings(embedded_workers=1)))
    yield running
    running.stop()


@pytest.fixture
def stub(sidelight: ServerThread) -> Iterator[pb_grpc.ExplainerStub]:
    with sidelight.channel() as channel:
        yield pb_grpc.ExplainerStub(channel)  # type: ignore[no-untyped-call]


def images(count: int) -> np.ndarray:
    return np.random.default_rng(4).uniform(0.0, 1.0, size=(count, *SHAPE))


def predict(stub: pb_grpc.ExplainerStub, model: str, rows: np.ndarray) -> np.ndarray:
    request = pb.PredictRequest(model=model, inputs=codec.tensor_to_proto(rows))
    return to_array(stub.Predict(request, timeout=60).outputs)


def test_predict_through_torchserve_equals_the_local_file_and_plain_torch(
    stub: pb_grpc.ExplainerStub,
) -> None:
    rows = images(700)  # three calls of at most 300 rows
    remote = predict(stub, REMOTE, rows)
    np.testing.assert_array_equal(remote, predict(stub, LOCAL, rows))
    with torch.no_grad():
        plain = SoftmaxImage()(torch.as_tensor(rows)).numpy()
    np.testing.assert_allclose(remote, plain, rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("rise", {"n_masks": 200, "seed": 5}),
        ("occlusion", {"window": 2}),
        ("kernel_shap", {"n_samples": 256, "seed": 5}),
    ],
)
def test_image_methods_through_torchserve_equal_the_local_file_for_the_same_seed(
    stub: pb_grpc.ExplainerStub, method: str, params: dict[str, object]
) -> None:
    rows = images(3)
    jobs = [
        stub.SubmitJob(explain_request(model, rows, method, params=params), timeout=30)
        for model in (REMOTE, LOCAL)
    ]
    remote, local = (watch_job(stub, job.job_id, timeout=180) for job in jobs)
    assert remote.state == local.state == pb.JobState.SUCCEEDED, remote.error or local.error
    attributions = to_array(remote.result.attributions)
    assert attributions.shape[0] == 3 and np.abs(attributions).max() > 1e-4
    np.testing.assert_allclose(
        attributions, to_array(local.result.attributions), rtol=1e-6, atol=1e-7
    )


def test_saliency_on_the_torchserve_model_is_failed_precondition(
    stub: pb_grpc.ExplainerStub,
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stub.Explain(explain_request(REMOTE, images(1), "saliency"), timeout=30)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert ".mar" in raised.value.details()
