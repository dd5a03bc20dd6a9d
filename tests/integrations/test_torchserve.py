"""Sidelight beside a real TorchServe 0.12: one archive, made by the real archiver with
Sidelight's handler, served by TorchServe and loaded by a real Sidelight server.

TorchServe batches concurrent requests (batchSize 4, a long maxBatchDelay so that the four
requests of a test arrive as one batch); the handler answers predictions in the worker and
sends every explanation row of the batch to Sidelight. Attributions are checked against plain
autograd on the model read straight from the archive; predictions against its forward pass.
A second model, `stalled`, is the same archive pointed at a socket that never answers.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import socket
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
import yaml
from conftest import ServerThread, server_settings, watch_job
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from sidelight.client import to_array
from sidelight.oip import grpc_service_pb2 as oip
from sidelight.oip import grpc_service_pb2_grpc as oip_grpc
from sidelight.v1 import explainer_pb2 as pb
from sidelight.v1 import explainer_pb2_grpc as pb_grpc
from torch import nn
from torchserve_peer import TorchServe, archive, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
HANDLER = ROOT / "handlers" / "sidelight_handlers" / "torchserve.py"
NAMES = {"0": "malignant", "1": "benign"}
BATCH = 4  # TorchServe's batchSize for breast_cancer: every test sends this many requests
STALLED_DEADLINE_S = 2.0


@dataclass
class Stack:
    torchserve: TorchServe
    sidelight: ServerThread
    mar: Path  # the file TorchServe serves and Sidelight loads
    model: nn.Module  # read straight from the archive: the independent reference
    baseline_mean: torch.Tensor  # 30, the archive's baseline_mean.npy
    rows: np.ndarray  # held-out-like rows: the archive's background.npy, 32 x 30
    stalled: socket.socket


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, model_repository: Path) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("torchserve")
    store, repository = folder / "store", folder / "repository"
    store.mkdir()
    # Sidelight's port is chosen first: the archive's model-config.yaml names it.
    sidelight_port = free_port()
    with socket.socket() as stalled:
        stalled.bind(("127.0.0.1", 0))
        stalled.listen(8)  # never accepted: connections hang until the caller's deadline
        mar = _archives(store, model_repository, folder, sidelight_port, stalled)
        # Sidelight's repository: the very file TorchServe serves, and an eager archive.
        (repository / "breast_cancer" / "1").mkdir(parents=True)
        (repository / "breast_cancer" / "1" / "model.mar").symlink_to(mar)
        (repository / "eager" / "1").mkdir(parents=True)
        shutil.copy(_eager_archive(folder / "eager"), repository / "eager" / "1" / "model.mar")
        sidelight = ServerThread(replace(server_settings(repository), port=sidelight_port))
        torchserve = None
        try:
            torchserve = TorchServe(folder / "torchserve", store, ["breast_cancer", "stalled"])
            with zipfile.ZipFile(mar) as opened:
                program = torch.export.load(io.BytesIO(opened.read("model.pt2")))
                mean = np.load(io.BytesIO(opened.read("baseline_mean.npy")))
                rows = np.load(io.BytesIO(opened.read("background.npy")))
            model = program.module()
            yield Stack(torchserve, sidelight, mar, model, torch.as_tensor(mean), rows, stalled)
        finally:
            if torchserve is not None:
                torchserve.stop()
            sidelight.stop()


def _archives(
    store: Path, model_repository: Path, folder: Path, sidelight_port: int, stalled: socket.socket
) -> Path:
    """breast_cancer.mar, whose handler calls Sidelight, and stalled.mar, the same model
    whose handler calls a socket that never answers; returns the first."""
    extras = _extra_files(model_repository / "breast_cancer", folder / "extras")
    model_file = model_repository / "breast_cancer" / "1" / "model.pt2"
    workers = {"minWorkers": 1, "maxWorkers": 1, "responseTimeout": 120}
    handler = {"sidelight_deadline_s": 60, "sidelight_address": f"127.0.0.1:{sidelight_port}"}
    archive(
        store,
        "stalled",
        model_file,
        extras,
        {
            **workers,
            "batchSize": 2,
            "maxBatchDelay": 2000,
            "handler": {
                "sidelight_address": f"127.0.0.1:{stalled.getsockname()[1]}",
                "sidelight_deadline_s": STALLED_DEADLINE_S,
                "sidelight_model": "breast_cancer",
            },
        },
        HANDLER,
    )
    return archive(
        store,
        "breast_cancer",
        model_file,
        extras,
        {**workers, "batchSize": BATCH, "maxBatchDelay": 3000, "handler": handler},
        HANDLER,
    )


def _extra_files(source: Path, folder: Path) -> list[Path]:
    """Sidelight's config (without labels: index_to_name.json gives them) and the files it
    names, shipped inside the archive."""
    folder.mkdir()
    config = yaml.safe_load((source / "config.yaml").read_text())
    del config["labels"]
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "index_to_name.json").write_text(json.dumps(NAMES))
    for name in ("baseline_mean.npy", "background.npy"):
        shutil.copy(source / name, folder / name)
    return sorted(folder.iterdir())


def _eager_archive(folder: Path) -> Path:
    """An eager model as TorchServe users archive one: a model file and a state dict. Neither
    is ever opened here (the weights are not even a pickle)."""
    folder.mkdir()
    (folder / "net.py").write_text("raise SystemExit('the archive code ran')\n")
    (folder / "weights.pth").write_bytes(b"not a state dict")
    return archive(
        folder,
        "eager",
        folder / "weights.pth",
        [],
        {"minWorkers": 1},
        HANDLER,
        model_file=str(folder / "net.py"),
    )


def probabilities(model: nn.Module, rows: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model(torch.as_tensor(rows)), 1).numpy()


def logit_gradient(model: nn.Module, x: torch.Tensor, targets: list[int]) -> torch.Tensor:
    """d logit_target / d x per row, by plain autograd."""
    x = x.detach().clone().requires_grad_(True)
    chosen = model(x)[torch.arange(len(x)), torch.tensor(targets)]
    (gradient,) = torch.autograd.grad(chosen.sum(), x)
    return gradient


def integrated_gradients(
    model: nn.Module, x: torch.Tensor, baseline: torch.Tensor, targets: list[int], n: int
) -> torch.Tensor:
    """(x - baseline) * integral_0^1 grad(baseline + a (x - baseline)) da, by n-point
    Gauss-Legendre quadrature (numpy's nodes) on [0, 1]."""
    nodes, weights = np.polynomial.legendre.leggauss(n)
    total = torch.zeros_like(x, dtype=torch.float64)
    for node, weight in zip((nodes + 1) / 2, weights / 2, strict=True):
        point = baseline + float(node) * (x - baseline)
        total += float(weight) * logit_gradient(model, point, targets).double()
    return ((x - baseline).double() * total).float()


def concurrently(stack: Stack, calls: list[tuple[str, Any]]) -> list[tuple[int, Any, float]]:
    """POST each (path, body) at once, so that TorchServe batches them: (status, body, s)."""

    def one(call: tuple[str, Any]) -> tuple[int, Any, float]:
        started = time.monotonic()
        status, body = stack.torchserve.post(*call)
        return status, body, time.monotonic() - started

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(one, calls))


def test_sidelight_loads_the_archive_torchserve_serves(stack: Stack) -> None:
    registry = stack.sidelight.service.registry
    assert registry.names() == ["breast_cancer"]
    model = registry.get("breast_cancer").primary
    assert model.file_digest == hashlib.sha256(stack.mar.read_bytes()).hexdigest()
    assert model.config.labels == ["malignant", "benign"]  # from index_to_name.json
    assert list(registry.unavailable) == ["eager"]
    with stack.sidelight.channel() as channel:
        stub = pb_grpc.ExplainerStub(channel)
        assert [m.name for m in stub.ListModels(pb.ListModelsRequest()).models] == ["breast_cancer"]
        request = pb.PredictRequest(model="eager")
        with pytest.raises(grpc.RpcError) as raised:
            stub.Predict(request, timeout=10)
        # The Open Inference Protocol knows the model and says it is not ready, as Triton does
        # for a model that failed to load.
        inference = oip_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        ready = {
            name: inference.ModelReady(oip.ModelReadyRequest(name=name), timeout=10).ready
            for name in ("eager", "breast_cancer")
        }
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND
    assert "eager model (net.py" in raised.value.details()
    assert ready == {"eager": False, "breast_cancer": True}


def test_predictions_of_a_batch_of_requests(stack: Stack) -> None:
    rows = stack.rows
    bodies = [
        {"instances": rows[0:3].tolist()},
        {"data": rows[3:4].tolist()},
        rows[4].tolist(),  # one row, without the batch dimension
        {"instances": rows[5:7].tolist()},
    ]
    answers = concurrently(stack, [("predictions/breast_cancer", b) for b in bodies])
    expected = probabilities(stack.model, rows[:7])
    got = np.concatenate([np.asarray(body["predictions"]) for _, body, _ in answers])
    assert [status for status, _, _ in answers] == [200] * BATCH, answers
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_explanations_of_a_batch_with_each_request_s_own_targets_and_method(
    stack: Stack,
) -> None:
    x = stack.rows
    requests = [
        {"instances": x[0:2].tolist(), "targets": [0, 1], "method": "saliency"},
        {
            "instances": x[2:3].tolist(),
            "target": 0,
            "method": "integrated_gradients",
            "params": {"n_steps": 32, "baseline": "zero"},
        },
        {  # no targets: each row's predicted class
            "instances": x[3:5].tolist(),
            "method": "integrated_gradients",
            "params": {"n_steps": 32, "baseline": "zero"},
        },
        {  # the default baseline (the archive's baseline_mean.npy)
            "instances": x[5:8].tolist(),
            "targets": [1, 0, 1],
            "method": "integrated_gradients",
            "params": {"n_steps": 16},
        },
    ]
    answers = concurrently(stack, [("explanations/breast_cancer", r) for r in requests])
    assert [status for status, _, _ in answers] == [200] * BATCH, answers
    bodies = [body for _, body, _ in answers]
    predicted = probabilities(stack.model, x[3:5]).argmax(1).tolist()
    assert [b["targets"] for b in bodies] == [[0, 1], [0], predicted, [1, 0, 1]]
    zero = torch.zeros(30)
    inputs = [torch.as_tensor(x[a:b]) for a, b in ((0, 2), (2, 3), (3, 5), (5, 8))]
    expected = [
        logit_gradient(stack.model, inputs[0], [0, 1]).abs(),
        integrated_gradients(stack.model, inputs[1], zero, [0], 32),
        integrated_gradients(stack.model, inputs[2], zero, predicted, 32),
        integrated_gradients(stack.model, inputs[3], stack.baseline_mean, [1, 0, 1], 16),
    ]
    for body, want in zip(bodies, expected, strict=True):
        got = torch.tensor(body["explanations"])
        assert got.shape == want.shape
        scale = float(want.abs().max())
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4 * scale)
    for body, rows in zip(bodies, inputs, strict=True):
        np.testing.assert_allclose(
            body["predictions"], probabilities(stack.model, rows.numpy()), atol=1e-5
        )
    # One Explain call per (method, params), every request of the batch in it: the two
    # requests with the same method and params share the call's explanation id.
    ids = [body["explanation_id"] for body in bodies]
    assert ids[1] == ids[2] and len({ids[0], ids[1], ids[3]}) == 3


def test_a_bad_request_fails_alone(stack: Stack) -> None:
    """Each bad request of a batch gets its own status naming the field; a good request that
    shares its method and params (so its Explain call) is answered."""
    x = stack.rows
    negative = x[0:2].copy()
    negative[1, 3] = -1.0  # the config's range is [0, 10000]
    same = {"method": "integrated_gradients", "params": {"n_steps": 8}}
    answers = concurrently(
        stack,
        [
            ("explanations/breast_cancer", {"instances": [[1.0, 2.0]], **same}),
            ("explanations/breast_cancer", {"instances": x[0:1].tolist(), "targets": [2], **same}),
            ("explanations/breast_cancer", {"instances": negative.tolist(), **same}),
            ("explanations/breast_cancer", {"instances": x[0:1].tolist(), "target": 1, **same}),
        ],
    )
    assert [status for status, _, _ in answers] == [400, 400, 400, 200], answers
    assert "instances: shape [1, 2], expected [n, 30]" in answers[0][1]["error"]
    assert "targets: give one class index in [0, 2) per row (1)" in answers[1][1]["error"]
    assert "instances[1]: values must be finite, within [0.0, 10000.0]" in answers[2][1]["error"]
    assert answers[3][1]["targets"] == [1]

    answers = concurrently(
        stack,
        [
            ("explanations/breast_cancer", {"instances": x[0:1].tolist(), "method": "telepathy"}),
            ("explanations/breast_cancer", {"instances": x[0:1].tolist(), "params": [8]}),
            ("predictions/breast_cancer", {"rows": x[0:1].tolist()}),
            ("predictions/breast_cancer", {"instances": x[0:1].tolist()}),
        ],
    )
    assert [status for status, _, _ in answers] == [404, 400, 400, 200], answers
    assert "telepathy" in answers[0][1]["error"]  # Sidelight's NOT_FOUND, passed on
    assert "params: must be an object" in answers[1][1]["error"]
    assert 'instances: give rows as {"instances"' in answers[2][1]["error"]


def test_sidelight_slow_then_down_fails_explanations_within_the_deadline(stack: Stack) -> None:
    x = stack.rows[:2].tolist()
    calls = [("explanations/stalled", {"instances": x}), ("predictions/stalled", {"instances": x})]
    (late, late_body, late_s), (ok, predicted, _) = concurrently(stack, calls)
    assert late == 504, late_body
    assert f"did not answer within {STALLED_DEADLINE_S:g} s" in late_body["error"]
    assert STALLED_DEADLINE_S <= late_s < STALLED_DEADLINE_S + 3.0
    assert ok == 200
    np.testing.assert_allclose(
        predicted["predictions"], probabilities(stack.model, stack.rows[:2]), atol=1e-6
    )

    stack.stalled.close()  # now nothing listens there
    (down, down_body, down_s), (ok, _, _) = concurrently(stack, calls)
    assert down == 503, down_body
    assert "is unavailable" in down_body["error"] and down_s < STALLED_DEADLINE_S + 3.0
    assert ok == 200


def _torchserve_grpc_messages() -> tuple[Any, Any]:
    """PredictionsRequest and PredictionResponse of TorchServe's inference.proto (fields 1-3
    and 1), declared here so that the test needs no generated stubs."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="torchserve_inference_test.proto",
        package="org.pytorch.serve.grpc.inference",
        syntax="proto3",
    )
    field = descriptor_pb2.FieldDescriptorProto
    request = proto.message_type.add(name="PredictionsRequest")
    request.field.add(name="model_name", number=1, type=field.TYPE_STRING)
    entry = request.nested_type.add(name="InputEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=field.TYPE_STRING)
    entry.field.add(name="value", number=2, type=field.TYPE_BYTES)
    request.field.add(
        name="input",
        number=3,
        type=field.TYPE_MESSAGE,
        label=field.LABEL_REPEATED,
        type_name=".org.pytorch.serve.grpc.inference.PredictionsRequest.InputEntry",
    )
    response = proto.message_type.add(name="PredictionResponse")
    response.field.add(name="prediction", number=1, type=field.TYPE_BYTES)
    classes = message_factory.GetMessages([proto], pool=descriptor_pool.DescriptorPool())
    return (
        classes["org.pytorch.serve.grpc.inference.PredictionsRequest"],
        classes["org.pytorch.serve.grpc.inference.PredictionResponse"],
    )


def test_torchserve_grpc_predictions_carry_a_batch_of_rows(stack: Stack) -> None:
    """The contract Sidelight's TorchServe client relies on: input {"data": JSON
    {"instances": rows}} gives one row of class probabilities per input row."""
    request_type, response_type = _torchserve_grpc_messages()
    rows = stack.rows[:BATCH]
    request = request_type(
        model_name="breast_cancer",
        input={"data": json.dumps({"instances": rows.tolist()}).encode()},
    )
    target = f"127.0.0.1:{stack.torchserve.grpc_inference_port}"
    with grpc.insecure_channel(target) as channel:
        predictions = channel.unary_unary(
            "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        # batchSize is 4: the one request waits out maxBatchDelay (3 s) before it runs.
        response = predictions(request, timeout=60)
    got = json.loads(response.prediction)["predictions"]
    np.testing.assert_allclose(got, probabilities(stack.model, rows), atol=1e-6)


def test_a_remote_entry_explains_through_torchserve_as_the_archive_loaded_locally(
    stack: Stack, tmp_path: Path
) -> None:
    """Sidelight's remote client against Sidelight's own handler: a second Sidelight server
    whose `breast_cancer_remote` entry (protocol torchserve) sends its perturbed rows to the
    TorchServe above, beside the very archive loaded locally. Four calls in flight fill
    TorchServe's batch of 4, so no call waits out maxBatchDelay."""
    repository = tmp_path / "repository"
    (repository / "local" / "1").mkdir(parents=True)
    (repository / "local" / "1" / "model.mar").symlink_to(stack.mar)
    remote = repository / "breast_cancer_remote"
    (remote / "1").mkdir(parents=True)
    with zipfile.ZipFile(stack.mar) as opened:
        config = yaml.safe_load(opened.read("config.yaml"))
        (remote / "background.npy").write_bytes(opened.read("background.npy"))
        (remote / "baseline_mean.npy").write_bytes(opened.read("baseline_mean.npy"))
    # The handler answers probabilities (its predictions), whatever the model returns.
    config.update(labels=list(NAMES.values()), output="probabilities")
    config["methods"] = [m for m in config["methods"] if m in ("kernel_shap", "lime", "occlusion")]
    (remote / "config.yaml").write_text(yaml.safe_dump(config))
    settings = {
        "protocol": "torchserve",
        "target": f"127.0.0.1:{stack.torchserve.grpc_inference_port}",
        "model_name": "breast_cancer",
        "batch_rows": 128,
        "max_concurrency": BATCH,
        "timeout_seconds": 60.0,
    }
    (remote / "1" / "remote.yaml").write_text(yaml.safe_dump(settings))
    server = ServerThread(server_settings(repository))
    try:
        with server.channel() as channel:
            stub = pb_grpc.ExplainerStub(channel)
            rows = stack.rows[:2].astype(np.float32)
            jobs = {}
            for model in ("breast_cancer_remote", "local"):
                request = pb.ExplainRequest(
                    model=model,
                    inputs=pb.Tensor(dtype="FP32", shape=[2, 30], data=rows.tobytes()),
                    method="kernel_shap",
                )
                request.params.update({"n_samples": 32, "seed": 9})  # 2 x 32 x 32 rows: 4 calls
                jobs[model] = watch_job(stub, stub.SubmitJob(request, timeout=30).job_id)
    finally:
        server.stop()
    remote_job, local_job = jobs["breast_cancer_remote"], jobs["local"]
    assert remote_job.state == local_job.state == pb.JobState.SUCCEEDED, remote_job.error
    got = to_array(remote_job.result.attributions)
    expected = to_array(local_job.result.attributions)
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
