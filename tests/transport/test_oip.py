"""The Open Inference Protocol's gRPC service on Sidelight's port, called by Triton's own client
(tritonclient[grpc], run under `.venv-peers` by `oip_client.py`: it needs protobuf < 7).

One real server per module on a free loopback port, with real models loaded from files; the
client script makes every call of the plan in one process and dumps the answers, and each
test checks one behaviour. Predictions and attributions are checked against the same model
files loaded here with torch (plain autograd, closed-form Shapley values), never against
Sidelight's own output.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import (
    LinearProbability,
    RedisServer,
    ServerThread,
    linear_model,
    server_settings,
    wait_until,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from peers import peer_python
from sidelight.demo.build import export_program
from sidelight.jobs.spec import JobState
from sidelight.settings import JobSettings
from sidelight.v1 import explainer_pb2 as pb
from sidelight.v1 import explainer_pb2_grpc as pb_grpc
from sidelight.validation import STRING_LIMITS
from sklearn.datasets import load_breast_cancer, load_digits

pytestmark = pytest.mark.slow

CLIENT = Path(__file__).with_name("oip_client.py")
MAX_ROWS = 16  # the module server's max_instances_per_request
INVALID = "INVALID_ARGUMENT"
NOT_FOUND = "NOT_FOUND"
LINEAR_WEIGHTS = np.array([0.05, -0.08, 0.03, 0.1], dtype=np.float32)


# -- the server and its models ------------------------------------------------------------------


@pytest.fixture(scope="module")
def repository(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits (torch.export), tiny_torchscript (TorchScript), breast_cancer, and `linear`, whose
    Shapley values have a closed form."""
    root = tmp_path_factory.mktemp("oip-repository")
    for name in ("digits", "tiny_torchscript", "breast_cancer"):
        shutil.copytree(model_repository / name, root / name)
    background = np.random.default_rng(3).uniform(-1, 1, (32, 4)).astype(np.float32)
    linear_model(
        root,
        "linear",
        torch.from_numpy(LINEAR_WEIGHTS),
        [4],
        ["saliency", "exact_shapley", "kernel_shap"],
        background,
    )
    for datatype, dtype in (("FP64", torch.float64), ("FP16", torch.float16)):
        write_linear(root / f"linear_{datatype.lower()}", datatype, dtype)
    return root


def write_linear(folder: Path, datatype: str, dtype: torch.dtype) -> None:
    """`LinearProbability` taking `datatype`: its saliency is +-LINEAR_WEIGHTS, exactly."""
    module = LinearProbability(torch.from_numpy(LINEAR_WEIGHTS).to(dtype))
    export_program(module, torch.zeros(2, 4, dtype=dtype), folder / "1" / "model.pt2")
    config = {
        "task": "tabular_classification",
        "input": {"shape": [4], "dtype": datatype, "range": [-5.0, 5.0]},
        "output": "probabilities",
        "labels": ["no", "yes"],
        "methods": ["saliency"],
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture(scope="module")
def oip_server(repository: Path) -> Iterator[ServerThread]:
    settings = replace(server_settings(repository), max_instances_per_request=MAX_ROWS)
    running = ServerThread(settings)
    yield running
    running.stop()


def call_oip(server: ServerThread, calls: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Run `calls` through tritonclient in the peers' venv; their answers by name."""
    plan = json.dumps({"address": server.address, "calls": calls})
    done = subprocess.run(
        [str(peer_python()), str(CLIENT)],
        input=plan,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    answers: dict[str, Any] = json.loads(done.stdout)
    return answers


def digit_images(count: int) -> np.ndarray:
    return (load_digits().images[1700 : 1700 + count] / 16.0).astype(np.float32)[:, None]


def tiny_rows(count: int) -> np.ndarray:
    return np.random.default_rng(11).normal(0, 2, (count, 4)).astype(np.float32)


def linear_rows() -> np.ndarray:
    return np.random.default_rng(5).uniform(-1, 1, (3, 4)).astype(np.float32)


def load_module(repository: Path, name: str) -> torch.nn.Module:
    """The model file, loaded here as any torch user would, not through Sidelight."""
    folder = repository / name / "1"
    if (folder / "model.pt2").exists():
        return torch.export.load(str(folder / "model.pt2")).module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in 2.13
        return torch.jit.load(str(folder / "model.pt"))  # type: ignore[no-untyped-call,no-any-return]


def probabilities(repository: Path, name: str, x: np.ndarray) -> np.ndarray:
    config = yaml.safe_load((repository / name / "config.yaml").read_text())
    with torch.no_grad():
        out = load_module(repository, name)(torch.from_numpy(x))
    if config["output"] == "logits":
        out = torch.softmax(out, 1)
    return out.numpy()


def gradients(repository: Path, name: str, x: np.ndarray, targets: list[int]) -> np.ndarray:
    """d model(x)[i, targets[i]] / d x[i], row by row, with plain autograd."""
    module = load_module(repository, name)
    rows = []
    for row, target in zip(x, targets, strict=True):
        leaf = torch.from_numpy(row[None].copy()).requires_grad_(True)
        module(leaf)[0, target].backward()
        assert leaf.grad is not None
        rows.append(leaf.grad[0].numpy())
    return np.stack(rows)


def integrated_gradients(
    repository: Path, name: str, x: np.ndarray, target: int, steps: int
) -> np.ndarray:
    """IG from a zero baseline, written out: the path integral of the gradient by
    Gauss-Legendre quadrature on `steps` nodes (numpy's), times the input."""
    module = load_module(repository, name)
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas, weights = torch.from_numpy((nodes + 1) / 2), torch.from_numpy(weights / 2)
    result = []
    for row in torch.from_numpy(x):
        path = (alphas[:, None] * row.double()[None]).float().requires_grad_(True)
        module(path)[:, target].sum().backward()
        assert path.grad is not None
        result.append(((weights[:, None] * path.grad.double()).sum(0) * row.double()).numpy())
    return np.stack(result)


# -- building calls -----------------------------------------------------------------------------


def infer(model: str, x: np.ndarray, **fields: Any) -> dict[str, Any]:
    """A call through tritonclient's InferInput API (raw contents)."""
    datatype = {np.float32: "FP32", np.float64: "FP64", np.float16: "FP16"}[x.dtype.type]
    inputs = [{"name": "input", "datatype": datatype, "array": x.tolist()}]
    inputs += fields.pop("extra_inputs", [])
    return {"call": "infer", "model": model, "inputs": inputs, **fields}


def message(model: str, tensors: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    """A ModelInferRequest in JSON form, built into tritonclient's service_pb2 by the script."""
    return {"call": "message", "request": {"model_name": model, "inputs": tensors, **fields}}


def typed(name: str, array: np.ndarray, datatype: str, field: str) -> dict[str, Any]:
    return {
        "name": name,
        "datatype": datatype,
        "shape": list(array.shape),
        "contents": {field: array.ravel().tolist()},
    }


def raw_entry(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()


def string(value: str) -> dict[str, str]:
    return {"string_param": value}


DIGIT_TARGETS = [3, 1, 4, 1, 5]


def plan(repository: Path) -> dict[str, dict[str, Any]]:
    digits = digit_images(5)
    tiny = tiny_rows(3)
    return {
        "live": {"call": "is_server_live"},
        "ready": {"call": "is_server_ready"},
        "server_metadata": {"call": "get_server_metadata"},
        "metadata_digits": {"call": "get_model_metadata", "model": "digits"},
        "metadata_tiny": {"call": "get_model_metadata", "model": "tiny_torchscript"},
        "metadata_version": {"call": "get_model_metadata", "model": "digits", "version": "1"},
        "metadata_unknown": {"call": "get_model_metadata", "model": "nope"},
        "ready_digits": {"call": "is_model_ready", "model": "digits"},
        "ready_version": {"call": "is_model_ready", "model": "digits", "version": "1"},
        "ready_unknown": {"call": "is_model_ready", "model": "nope"},
        "ready_missing_version": {"call": "is_model_ready", "model": "digits", "version": "7"},
        "ready_bad_version": {"call": "is_model_ready", "model": "digits", "version": "v1"},
        "predict_raw": infer("digits", digits, id="order-17"),
        "predict_typed": message(
            "digits", [typed("input", digits, "FP32", "fp32_contents")], id="order-18"
        ),
        "predict_only_predicted": infer("digits", digits, outputs=["predicted"]),
        "explain_targets_parameter": infer(
            "digits",
            digits,
            id="case-7",
            headers={"sidelight-caller": "loan-app"},
            parameters={
                "explain_method": "saliency",
                "explain_targets": json.dumps(DIGIT_TARGETS),
                "explain_params.abs": False,
                "subject_id": "person-42",
            },
        ),
        "explain_targets_tensor": infer(
            "tiny_torchscript",
            tiny,
            parameters={"explain_method": "input_x_gradient"},
            extra_inputs=[{"name": "targets", "datatype": "INT32", "array": [2, 0, 1]}],
        ),
        "explain_typed_targets_tensor": message(
            "tiny_torchscript",
            [
                typed("input", tiny, "FP32", "fp32_contents"),
                typed("targets", np.array([1, 2, 0]), "INT64", "int64_contents"),
            ],
            parameters={"explain_method": string("input_x_gradient")},
        ),
        "explain_json_params": infer(
            "tiny_torchscript",
            tiny,
            parameters={
                "explain_method": "integrated_gradients",
                "explain_params": json.dumps({"n_steps": 64}),
                "explain_targets": 2,
            },
        ),
        "explain_only_attributions": infer(
            "digits",
            digits,
            outputs=["attributions", "targets"],
            parameters={"explain_method": "saliency"},
        ),
        "explain_job": infer(
            "linear",
            linear_rows(),
            parameters={"explain_method": "exact_shapley", "explain_targets": "[1, 0, 1]"},
            timeout=120,
        ),
        **datatype_calls(),
        **bad_calls(),
        "live_after": {"call": "is_server_live"},
        "predict_after": infer("digits", digits),
    }


SIGNED_SALIENCY = {"explain_method": "saliency", "explain_params.abs": False}


def datatype_calls() -> dict[str, dict[str, Any]]:
    """Saliency of the FP64 and FP16 linear models, targets [1, 0], raw and typed."""
    x = linear_rows()[:2]
    parameters = {**SIGNED_SALIENCY, "explain_targets": "[1, 0]"}
    typed_parameters = {k: message_parameter(v) for k, v in parameters.items()}
    return {
        "FP64 raw": infer("linear_fp64", x.astype(np.float64), parameters=parameters),
        "FP64 typed": message(
            "linear_fp64",
            [typed("input", x.astype(np.float64), "FP64", "fp64_contents")],
            parameters=typed_parameters,
        ),
        "FP16 raw": infer("linear_fp16", x.astype(np.float16), parameters=parameters),
    }


def message_parameter(value: object) -> dict[str, object]:
    if isinstance(value, bool):
        return {"bool_param": value}
    if isinstance(value, int):
        return {"int64_param": value}
    return {"string_param": value}


# name: (call, status code, the field the message must name)
BAD = {
    "wrong shape": (infer("digits", np.zeros((2, 8, 8), np.float32)), INVALID, "inputs[0].shape"),
    "wrong dtype": (
        infer("digits", digit_images(2).astype(np.float64)),
        INVALID,
        "inputs[0].datatype",
    ),
    "FP16 typed": (
        message(
            "digits",
            [{"name": "input", "datatype": "FP16", "shape": [1, 1, 8, 8], "contents": {}}],
        ),
        INVALID,
        "inputs[0].contents",
    ),
    "raw and typed both": (
        message(
            "digits",
            [typed("input", digit_images(1), "FP32", "fp32_contents")],
            raw_input_contents=[raw_entry(digit_images(1))],
        ),
        INVALID,
        "inputs[0].contents",
    ),
    "raw length mismatch": (
        message(
            "digits",
            [{"name": "input", "datatype": "FP32", "shape": [2, 1, 8, 8]}],
            raw_input_contents=[raw_entry(digit_images(1))],
        ),
        INVALID,
        "raw_input_contents[0]",
    ),
    "typed count mismatch": (
        message(
            "digits",
            [{**typed("input", digit_images(1), "FP32", "fp32_contents"), "shape": [2, 1, 8, 8]}],
        ),
        INVALID,
        "inputs[0].contents.fp32_contents",
    ),
    "typed field of another datatype": (
        message("digits", [typed("input", digit_images(1), "FP32", "fp64_contents")]),
        INVALID,
        "inputs[0].contents.fp64_contents",
    ),
    "NaN": (
        infer("digits", np.full((1, 1, 8, 8), np.nan, np.float32)),
        INVALID,
        "raw_input_contents[0]",
    ),
    "unknown model": (infer("nope", digit_images(1)), NOT_FOUND, "model_name"),
    "unknown version": (infer("digits", digit_images(1), version="9"), NOT_FOUND, "model_version"),
    "bad version": (infer("digits", digit_images(1), version="v1"), INVALID, "model_version"),
    "unknown input": (
        message("digits", [typed("image", digit_images(1), "FP32", "fp32_contents")]),
        INVALID,
        "inputs[0].name",
    ),
    "unknown method": (
        infer("digits", digit_images(1), parameters={"explain_method": "magic"}),
        NOT_FOUND,
        "parameters.explain_method",
    ),
    "misspelt parameter": (
        infer("digits", digit_images(1), parameters={"explain_metod": "saliency"}),
        INVALID,
        "parameters.explain_metod",
    ),
    "bad params JSON": (
        infer(
            "tiny_torchscript",
            tiny_rows(1),
            parameters={"explain_method": "integrated_gradients", "explain_params": "{n_steps: 4"},
        ),
        INVALID,
        "parameters.explain_params",
    ),
    "bad param value": (
        infer(
            "tiny_torchscript",
            tiny_rows(1),
            parameters={
                "explain_method": "integrated_gradients",
                "explain_params": '{"n_steps": 1}',
            },
        ),
        INVALID,
        "parameters.explain_params.n_steps",
    ),
    "bad typed param value": (
        infer(
            "tiny_torchscript",
            tiny_rows(1),
            parameters={"explain_method": "integrated_gradients", "explain_params.n_steps": 1},
        ),
        INVALID,
        "parameters.explain_params.n_steps",
    ),
    "NaN in params": (
        infer(
            "digits",
            digit_images(1),
            parameters={
                "explain_method": "kernel_shap",
                "explain_params": '{"max_evaluations": NaN}',
            },
        ),
        INVALID,
        "parameters.explain_params.max_evaluations",
    ),
    "param given twice": (
        infer(
            "tiny_torchscript",
            tiny_rows(1),
            parameters={
                "explain_method": "integrated_gradients",
                "explain_params": '{"n_steps": 8}',
                "explain_params.n_steps": 16,
            },
        ),
        INVALID,
        "parameters.explain_params.n_steps",
    ),
    "target out of range": (
        infer(
            "digits",
            digit_images(2),
            parameters={"explain_method": "saliency", "explain_targets": "[1, 99]"},
        ),
        INVALID,
        "parameters.explain_targets[1]",
    ),
    "targets count": (
        infer(
            "tiny_torchscript",
            tiny_rows(3),
            parameters={"explain_method": "saliency"},
            extra_inputs=[{"name": "targets", "datatype": "INT64", "array": [0, 1]}],
        ),
        INVALID,
        "inputs[1]",
    ),
    "targets without a method": (
        infer("digits", digit_images(1), parameters={"explain_targets": 3}),
        INVALID,
        "parameters.explain_targets",
    ),
    "too many rows": (
        infer("tiny_torchscript", tiny_rows(MAX_ROWS + 1)),
        INVALID,
        "inputs[0].shape",
    ),
    "an id over its limit": (
        infer("digits", digit_images(1), id="i" * (STRING_LIMITS["request_id"] + 1)),
        INVALID,
        "id",
    ),
    "a model name of a megabyte": (
        infer("m" * 1_000_000, digit_images(1)),
        INVALID,
        "model_name",
    ),
    "unknown requested output": (
        infer("digits", digit_images(1), outputs=["nope"]),
        INVALID,
        "outputs[0].name",
    ),
    "explanation output without a method": (
        infer("digits", digit_images(1), outputs=["attributions"]),
        INVALID,
        "outputs[0].name",
    ),
}


def bad_calls() -> dict[str, dict[str, Any]]:
    return {f"bad: {name}": case[0] for name, case in BAD.items()}


@pytest.fixture(scope="module")
def answers(oip_server: ServerThread, repository: Path) -> dict[str, Any]:
    return call_oip(oip_server, plan(repository))


def ok(answer: Any) -> Any:
    assert not (isinstance(answer, dict) and "error" in answer), answer
    return answer


def array(answer: dict[str, Any], name: str) -> np.ndarray:
    return np.array(answer["outputs"][name]["data"])


# -- health and metadata ------------------------------------------------------------------------


def test_server_is_live_and_ready(answers: dict[str, Any]) -> None:
    assert ok(answers["live"]) is True
    assert ok(answers["ready"]) is True


def test_server_metadata_names_sidelight(answers: dict[str, Any]) -> None:
    metadata = ok(answers["server_metadata"])
    assert metadata["name"] == "sidelight"
    assert metadata["version"] == "0.1.0"
    assert metadata["extensions"] == ["sidelight_explain"]


def test_model_metadata_describes_tensors_with_a_variable_batch(answers: dict[str, Any]) -> None:
    metadata = ok(answers["metadata_digits"])
    assert metadata["name"] == "digits"
    assert metadata["versions"] == ["1"]
    assert metadata["platform"] == "pytorch_torch_export"
    assert metadata["inputs"] == [
        {"name": "input", "datatype": "FP32", "shape": ["-1", "1", "8", "8"]}
    ]
    assert metadata["outputs"] == [
        {"name": "output", "datatype": "FP32", "shape": ["-1", "10"]},
        {"name": "predicted", "datatype": "INT64", "shape": ["-1"]},
    ]
    assert ok(answers["metadata_version"])["versions"] == ["1"]
    tiny = ok(answers["metadata_tiny"])
    assert tiny["platform"] == "pytorch_libtorch"
    assert tiny["inputs"][0]["shape"] == ["-1", "4"]


def test_model_readiness_and_unknown_models(answers: dict[str, Any]) -> None:
    assert ok(answers["ready_digits"]) is True
    assert ok(answers["ready_version"]) is True
    for name, code, field in [
        ("ready_unknown", NOT_FOUND, "name: no model 'nope'"),
        ("ready_missing_version", NOT_FOUND, "version: model 'digits' has no version '7'"),
        ("ready_bad_version", INVALID, "version: 'v1' is not a version number"),
        ("metadata_unknown", NOT_FOUND, "name: no model 'nope'"),
    ]:
        error = answers[name]["error"]
        assert error["code"] == code, name
        assert error["message"].startswith(field), error


# -- predictions --------------------------------------------------------------------------------


def test_predict_with_raw_contents_answers_raw(answers: dict[str, Any], repository: Path) -> None:
    answer = ok(answers["predict_raw"])
    assert answer["raw"] and answer["id"] == "order-17"
    assert (answer["model_name"], answer["model_version"]) == ("digits", "1")
    assert list(answer["outputs"]) == ["output", "predicted"]
    expected = probabilities(repository, "digits", digit_images(5))
    np.testing.assert_allclose(array(answer, "output"), expected, atol=1e-5)
    assert answer["outputs"]["output"]["datatype"] == "FP32"
    assert array(answer, "predicted").tolist() == expected.argmax(1).tolist()
    assert answer["outputs"]["predicted"]["datatype"] == "INT64"


def test_predict_with_typed_contents_answers_typed(
    answers: dict[str, Any], repository: Path
) -> None:
    answer = ok(answers["predict_typed"])
    assert not answer["raw"] and answer["id"] == "order-18"
    expected = probabilities(repository, "digits", digit_images(5))
    np.testing.assert_allclose(array(answer, "output"), expected, atol=1e-5)
    assert array(answer, "predicted").tolist() == expected.argmax(1).tolist()


@pytest.mark.parametrize("name", ["FP64 raw", "FP64 typed", "FP16 raw"])
def test_each_datatype_predicts_and_explains(answers: dict[str, Any], name: str) -> None:
    answer = ok(answers[name])
    assert answer["raw"] == name.endswith("raw")
    x = linear_rows()[:2].astype(np.float64)
    if name.startswith("FP16"):
        x = x.astype(np.float16).astype(np.float64)  # what the model saw
    weights = LINEAR_WEIGHTS.astype(np.float64)
    p_yes = 0.5 + x @ weights
    tolerance = 1e-3 if name.startswith("FP16") else 1e-6
    np.testing.assert_allclose(
        array(answer, "output"), np.stack([1 - p_yes, p_yes], 1), atol=tolerance
    )
    # d p(yes) / dx = w, d p(no) / dx = -w: targets [1, 0].
    expected = np.stack([weights, -weights])
    np.testing.assert_allclose(array(answer, "attributions"), expected, atol=tolerance)


def test_only_the_requested_outputs_are_returned(answers: dict[str, Any]) -> None:
    assert list(ok(answers["predict_only_predicted"])["outputs"]) == ["predicted"]
    assert list(ok(answers["explain_only_attributions"])["outputs"]) == ["attributions", "targets"]


# -- explanations -------------------------------------------------------------------------------


def test_explain_with_per_row_targets_in_a_parameter(
    answers: dict[str, Any], repository: Path
) -> None:
    answer = ok(answers["explain_targets_parameter"])
    x = digit_images(5)
    assert array(answer, "targets").tolist() == DIGIT_TARGETS
    expected = gradients(repository, "digits", x, DIGIT_TARGETS)  # abs: false, the raw gradient
    np.testing.assert_allclose(array(answer, "attributions"), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        array(answer, "output"), probabilities(repository, "digits", x), atol=1e-5
    )
    parameters = answer["parameters"]
    assert parameters["explain_method"] == "saliency"
    assert len(parameters["explanation_id"]) == 32
    assert parameters["model_evaluations"] >= 5
    assert "job_id" not in parameters


def test_explain_with_per_row_targets_in_an_input_tensor(
    answers: dict[str, Any], repository: Path
) -> None:
    x = tiny_rows(3)
    for name, targets in [
        ("explain_targets_tensor", [2, 0, 1]),
        ("explain_typed_targets_tensor", [1, 2, 0]),
    ]:
        answer = ok(answers[name])
        assert array(answer, "targets").tolist() == targets
        expected = x * gradients(repository, "tiny_torchscript", x, targets)
        np.testing.assert_allclose(array(answer, "attributions"), expected, rtol=1e-4, atol=1e-6)
    assert not ok(answers["explain_typed_targets_tensor"])["raw"]


def test_explain_params_as_json_with_one_target_for_all(
    answers: dict[str, Any], repository: Path
) -> None:
    answer = ok(answers["explain_json_params"])
    x = tiny_rows(3)
    assert array(answer, "targets").tolist() == [2, 2, 2]
    attributions = array(answer, "attributions")
    expected = integrated_gradients(repository, "tiny_torchscript", x, 2, steps=64)
    np.testing.assert_allclose(attributions, expected, rtol=1e-4, atol=1e-6)
    # Completeness error, per row: how far the attributions' sum is from f(x) - f(0) at the
    # class explained (Gauss-Legendre is not exact across the MLP's ReLU kinks).
    module = load_module(repository, "tiny_torchscript")
    with torch.no_grad():
        gap = (module(torch.from_numpy(x)) - module(torch.zeros(1, 4)))[:, 2].numpy()
    errors = array(answer, "completeness_error")
    np.testing.assert_allclose(errors, attributions.sum(1) - gap, atol=2e-5)
    assert answer["parameters"]["model_evaluations"] > 3 * 64


def test_a_perturbation_method_runs_as_a_job_within_the_call(answers: dict[str, Any]) -> None:
    answer = ok(answers["explain_job"])
    parameters = answer["parameters"]
    assert len(parameters["job_id"]) == 32
    assert parameters["explanation_id"] == parameters["job_id"]  # the job's audit record id
    x = linear_rows()
    background = np.random.default_rng(3).uniform(-1, 1, (32, 4)).astype(np.float32)
    # p(yes) = 0.5 + w.x: each feature's Shapley value is w_i (x_i - E[x_i]) for "yes", the
    # opposite for "no".
    shapley = LINEAR_WEIGHTS[None] * (x - background.mean(0))
    expected = shapley * np.array([1, -1, 1])[:, None]
    np.testing.assert_allclose(array(answer, "attributions"), expected, atol=1e-5)
    assert array(answer, "targets").tolist() == [1, 0, 1]


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_gets_its_code_and_names_the_field(answers: dict[str, Any], name: str) -> None:
    _call, code, field = BAD[name]
    error = answers[f"bad: {name}"]["error"]
    assert error["code"] == code, error
    assert error["message"].startswith(f"{field}:"), error


def test_the_server_keeps_answering_after_bad_input(
    answers: dict[str, Any], repository: Path
) -> None:
    assert ok(answers["live_after"]) is True
    expected = probabilities(repository, "digits", digit_images(5))
    np.testing.assert_allclose(array(ok(answers["predict_after"]), "output"), expected, atol=1e-5)


# -- jobs and the call's deadline ---------------------------------------------------------------


def test_a_job_is_cancelled_when_the_call_gives_up(oip_server: ServerThread) -> None:
    jobs = oip_server.service.jobs
    cancelled_before = jobs.stats().jobs.get(JobState.CANCELLED, 0)
    rows = load_breast_cancer().data[400:402].astype(np.float32)
    call = infer(
        "breast_cancer",
        rows,
        parameters={"explain_method": "kernel_shap", "explain_params": '{"n_samples": 1048576}'},
        timeout=1.0,
    )
    answer = call_oip(oip_server, {"slow": call})["slow"]
    assert answer["error"]["code"] == "DEADLINE_EXCEEDED", answer
    wait_until(
        lambda: jobs.stats().jobs.get(JobState.CANCELLED, 0) == cancelled_before + 1,
        30,
        "the job to be cancelled",
    )
    wait_until(lambda: jobs.stats().jobs.get(JobState.RUNNING, 0) == 0, 30, "no job running")


# -- the same data plane: audit, metrics, health ------------------------------------------------


def test_an_explanation_is_audited_with_its_caller(
    answers: dict[str, Any], oip_server: ServerThread
) -> None:
    answer = ok(answers["explain_targets_parameter"])
    record_id = answer["parameters"]["explanation_id"]
    with oip_server.channel() as channel:
        stub = pb_grpc.ExplainerStub(channel)  # type: ignore[no-untyped-call]
        stored = stub.GetAuditRecord(pb.GetAuditRecordRequest(record_id=record_id), timeout=30)
    content = json.loads(stored.content_json)
    assert content["record_id"] == record_id and content["kind"] == "explanation"
    assert content["method"] == "saliency" and content["model"] == "digits"
    assert content["caller"] == "header:loan-app" and content["subject_id"] == "person-42"
    assert content["request_id"] == "case-7" == answer["id"]
    assert content["targets"] == DIGIT_TARGETS


def test_calls_are_counted_like_the_explainer_service_s(
    answers: dict[str, Any], oip_server: ServerThread
) -> None:
    url = f"http://127.0.0.1:{oip_server.service.endpoints.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    counts = {
        line.split("{", 1)[1].split("}", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("sidelight_rpc_duration_seconds_count{")
    }
    saliency = 'code="OK",method="saliency",model="digits",rpc="ModelInfer"'
    assert counts[saliency] >= 2
    assert counts['code="NOT_FOUND",method="",model="unknown",rpc="ModelInfer"'] >= 1
    assert counts['code="OK",method="",model="",rpc="ServerLive"'] >= 2
    assert 'sidelight_rpc_in_flight{rpc="ModelInfer"} 0.0' in text


def test_health_answers_for_the_inference_service(oip_server: ServerThread) -> None:
    with oip_server.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(
            health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"), timeout=10
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_server_ready_stays_true_while_redis_is_down(
    repository: Path, redis_server: RedisServer
) -> None:
    # Predict and explain-within-the-call of gradient methods need no Redis: a Triton client
    # polling ServerReady keeps sending them. The jobs' readiness is apart (health service
    # sidelight.v1.Explainer.jobs).
    settings = replace(server_settings(repository), jobs=JobSettings(redis_url=redis_server.url))
    server = ServerThread(settings)
    readiness = {"live": {"call": "is_server_live"}, "ready": {"call": "is_server_ready"}}
    try:
        assert call_oip(server, readiness) == {"live": True, "ready": True}
        redis_server.kill()
        wait_until(lambda: not server.service.readiness.jobs_ready, 30, "jobs readiness to drop")
        assert call_oip(server, readiness) == {"live": True, "ready": True}
        redis_server.start()
        wait_until(lambda: server.service.readiness.jobs_ready, 30, "jobs readiness back")
    finally:
        server.stop()


def test_a_full_queue_answers_resource_exhausted_and_is_counted(repository: Path) -> None:
    # Two rows where the queue takes one: refused at admission, whatever else is waiting.
    settings = server_settings(repository, max_batch_size=1, max_queue_instances=1)
    server = ServerThread(settings)
    try:
        answer = call_oip(server, {"full": infer("digits", digit_images(2))})["full"]
        rejected = server.service.metrics.registry.get_sample_value(
            "sidelight_requests_rejected_total", {"model": "digits"}
        )
    finally:
        server.stop()
    assert answer["error"]["code"] == "RESOURCE_EXHAUSTED", answer
    assert "retry" in answer["error"]["message"]
    assert rejected == 1
