"""ONNX models: loaded with onnxruntime, forward passes only, the same answers as the
torch.export twin of the same weights (the demo builds both from one trained network)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from sidelight.errors import ConfigError
from sidelight.methods.base import Batch
from sidelight.methods.catalog import METHODS, check_model, parse_params
from sidelight.models.model import ModelFormat
from sidelight.models.registry import ModelRegistry
from sklearn.datasets import load_breast_cancer


def rows(count: int) -> torch.Tensor:
    return torch.from_numpy(load_breast_cancer().data[400 : 400 + count].astype(np.float32))


def test_the_onnx_demo_model_loads_forward_only(registry: ModelRegistry) -> None:
    model = registry.get("breast_cancer_onnx").primary
    assert model.format is ModelFormat.ONNX
    assert model.capabilities == frozenset()
    assert sorted(model.config.methods) == ["kernel_shap", "lime", "occlusion"]
    twin = registry.get("breast_cancer").primary
    x = rows(16)
    with torch.no_grad():
        torch.testing.assert_close(model.module(x), twin.module(x), atol=1e-5, rtol=1e-5)
    assert model.background is not None and twin.background is not None
    assert model.background.digest == twin.background.digest


@pytest.mark.parametrize("method", ["kernel_shap", "lime", "occlusion"])
def test_perturbation_methods_match_the_torch_twin(registry: ModelRegistry, method: str) -> None:
    onnx_model = registry.get("breast_cancer_onnx").primary
    twin = registry.get("breast_cancer").primary
    x = rows(3)
    params = parse_params(METHODS[method], {"n_samples": 128} if method != "occlusion" else {})
    batch = Batch(x, torch.tensor([-1, 0, 1]), torch.full((3,), 4))
    from_onnx = METHODS[method].attribute(onnx_model, batch, params, 1024)
    from_torch = METHODS[method].attribute(twin, batch, params, 1024)
    assert torch.equal(from_onnx.targets, from_torch.targets)
    torch.testing.assert_close(
        from_onnx.attributions, from_torch.attributions, atol=1e-5, rtol=1e-4
    )


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "deeplift"])
def test_gradient_methods_are_refused_at_start_naming_the_way_out(
    registry: ModelRegistry, method: str
) -> None:
    model = registry.get("breast_cancer_onnx").primary
    configured = replace(model, config=model.config.model_copy(update={"methods": [method]}))
    with pytest.raises(ConfigError) as refused:
        check_model(configured)
    assert refused.value.field == "methods"
    assert method in str(refused.value) and "ONNX" in str(refused.value)
