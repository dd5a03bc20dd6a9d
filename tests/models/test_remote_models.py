"""Remote model entries without a peer server: remote.yaml validated at start with errors that
name file and field (the model unavailable, the others loading); an endpoint that is down does
not stop the start, and its calls fail UNAVAILABLE, retried, naming the endpoint; gradient
methods are refused for what they are.

The endpoint here is a real gRPC channel to a loopback port where nothing listens; the tests
against real MLServer and TorchServe servers are test_remote_mlserver.py and
test_remote_torchserve.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import server_settings, write_torchscript_model
from remote_support import FEATURES, Logistic, free_port, write_remote
from sidelight.errors import ConfigError, FailedPrecondition, ModelNotFound, RemoteModelError
from sidelight.methods.catalog import check_model, method_for
from sidelight.models.config import load_config
from sidelight.models.loaders import load_model
from sidelight.models.model import ModelFormat
from sidelight.models.registry import ModelRegistry
from sidelight.models.remote.module import remote_client
from sidelight.transport.server import Service

CPU = torch.device("cpu")


@pytest.fixture
def logistic() -> Logistic:
    generator = np.random.default_rng(0)
    return Logistic(generator.normal(size=FEATURES), 0.5, generator.normal(size=(40, FEATURES)))


def remote_yaml(folder: Path) -> Path:
    return folder / "1" / "remote.yaml"


def edit(path: Path, **changes: object) -> None:
    settings = yaml.safe_load(path.read_text())
    settings.update(changes)
    path.write_text(yaml.safe_dump(settings))


@pytest.mark.parametrize(
    ("changes", "field", "problem"),
    [
        ({"batch_rows": 0}, "batch_rows", "greater than or equal to 1"),
        ({"protocol": "http"}, "protocol", "'oip' or 'torchserve'"),
        ({"target": "localhost"}, "target", "is not host:port"),
        ({"timeout_seconds": -1}, "timeout_seconds", "greater than 0"),
        ({"retires": 3}, "retires", "Extra inputs are not permitted"),
    ],
)
def test_a_bad_remote_yaml_makes_its_model_unavailable_naming_file_and_field(
    tmp_path: Path, logistic: Logistic, changes: dict[str, object], field: str, problem: str
) -> None:
    write_remote(tmp_path / "credit", logistic, free_port())
    edit(remote_yaml(tmp_path / "credit"), **changes)
    with pytest.raises(ConfigError) as raised:  # the only model: the start fails
        asyncio.run(Service.start(server_settings(tmp_path)))
    assert raised.value.path == str(remote_yaml(tmp_path / "credit"))
    assert raised.value.field == field
    assert problem in raised.value.problem

    write_torchscript_model(tmp_path / "tiny")  # beside a good model: that one loads
    registry = ModelRegistry.load(tmp_path, [CPU], check_model)
    assert registry.names() == ["tiny"]
    broken = registry.unavailable["credit"]
    assert (broken.path, broken.field) == (str(remote_yaml(tmp_path / "credit")), field)
    with pytest.raises(ModelNotFound, match=field):
        registry.get("credit")


def test_a_remote_yaml_beside_a_model_file_is_refused(tmp_path: Path, logistic: Logistic) -> None:
    write_remote(tmp_path / "credit", logistic, free_port())
    (tmp_path / "credit" / "1" / "model.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"needs exactly one of .*remote.yaml"):
        ModelRegistry.load(tmp_path, [CPU], check_model)


def test_a_remote_entry_listing_a_gradient_method_is_refused_at_start(
    tmp_path: Path, logistic: Logistic
) -> None:
    write_remote(tmp_path / "credit", logistic, free_port())
    edit(tmp_path / "credit" / "config.yaml", methods=["kernel_shap", "saliency"])
    with pytest.raises(ConfigError) as raised:
        ModelRegistry.load(tmp_path, [CPU], check_model)
    assert raised.value.field == "methods"
    assert "remote models run forward passes only" in raised.value.problem
    assert "model.pt2" in raised.value.problem


def test_an_endpoint_down_at_start_loads_and_its_calls_fail_unavailable_after_retries(
    tmp_path: Path, logistic: Logistic
) -> None:
    port = free_port()  # nothing listens there
    write_remote(tmp_path / "credit", logistic, port, retries=2, batch_rows=4)
    folder = tmp_path / "credit"
    model = load_model(folder, "1", load_config(folder / "config.yaml"), CPU)
    check_model(model)
    assert model.format is ModelFormat.REMOTE
    assert model.capabilities == frozenset() and model.num_classes == 2
    client = remote_client(model)
    assert client is not None
    try:
        with pytest.raises(RemoteModelError) as raised:
            model.module(torch.zeros(3, FEATURES, dtype=torch.float64))
        error = raised.value
        assert error.status == "UNAVAILABLE" and error.model == "credit"
        assert f"127.0.0.1:{port}" in str(error) and "after 3 attempts" in str(error)
        figures = client.stats.figures()
        assert figures.calls == {"UNAVAILABLE": 3}  # one call, retried twice
        assert figures.rows == 0 and figures.up is False
        assert client.probe() is False
    finally:
        client.close()


def test_a_gradient_method_asked_of_a_remote_model_is_a_failed_precondition(
    tmp_path: Path, logistic: Logistic
) -> None:
    write_remote(tmp_path / "credit", logistic, free_port())
    folder = tmp_path / "credit"
    model = load_model(folder, "1", load_config(folder / "config.yaml"), CPU)
    try:
        for name in ("saliency", "grad_cam", "deeplift"):  # none listed in its config
            with pytest.raises(FailedPrecondition) as raised:
                method_for(model, name)
            assert raised.value.field == "method"
            assert "model.pt2" in raised.value.problem and ".mar" in raised.value.problem
        assert method_for(model, "kernel_shap").name == "kernel_shap"
    finally:
        client = remote_client(model)
        assert client is not None
        client.close()
