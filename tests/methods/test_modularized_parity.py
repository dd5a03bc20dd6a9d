"""Module-rule methods on the modularized torch.export program == Captum on the eager module.

`modularize` rebuilds one leaf module per aten call (and inserts the CAM-layer marker) so that
Captum's hooks find nn.ReLU, nn.Conv2d, ... The oracle is Captum itself, run the ordinary way
(with `target=`) on the nn.Module the program was exported from, with the same weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from captum.attr import LRP, DeepLift, GuidedBackprop, GuidedGradCam, LayerGradCam
from method_support import (
    Twin,
    assert_close,
    attribute,
    real_inputs,
    resolved,
    set_lrp_rules,
    upsample_like,
    zoo,
)
from sidelight.models.model import Capability
from sidelight.models.modularize import LAYER_MARKER, LayerMarker, modularize
from sidelight.models.registry import ModelRegistry
from torch import nn

MODELS = ["digits", "breast_cancer", "pooled", "deep_cam", "bias_free"]

Oracle = Callable[[Twin, torch.Tensor, torch.Tensor], torch.Tensor]


def _gbp(twin: Twin, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    result: torch.Tensor = GuidedBackprop(twin.eager).attribute(
        x.clone().requires_grad_(True), target=t
    )
    return result


def _deeplift(twin: Twin, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    baseline = twin.model.baseline().tensor.expand_as(x)
    result: torch.Tensor = DeepLift(twin.eager).attribute(
        x.clone().requires_grad_(True), baselines=baseline, target=t
    )
    return result


def _lrp(epsilon: float) -> Oracle:
    def run(twin: Twin, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        set_lrp_rules(twin.eager, epsilon)
        result: torch.Tensor = LRP(twin.eager).attribute(x.clone().requires_grad_(True), target=t)
        return result

    return run


def _grad_cam(relu: bool) -> Oracle:
    def run(twin: Twin, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        maps = LayerGradCam(twin.eager, twin.layer).attribute(
            x.clone().requires_grad_(True), target=t, relu_attributions=relu
        )
        return upsample_like(maps, x)

    return run


def _guided_grad_cam(twin: Twin, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    result: torch.Tensor = GuidedGradCam(twin.eager, twin.layer).attribute(
        x.clone().requires_grad_(True), target=t, interpolate_mode="bilinear"
    )
    return result


CASES: list[tuple[str, dict[str, object], Oracle]] = [
    ("guided_backprop", {}, _gbp),
    ("deeplift", {}, _deeplift),
    ("lrp", {}, _lrp(1e-9)),
    ("lrp", {"epsilon": 0.1}, _lrp(0.1)),
    ("grad_cam", {}, _grad_cam(True)),
    ("grad_cam", {"relu": False}, _grad_cam(False)),
    ("guided_grad_cam", {}, _guided_grad_cam),
]


@pytest.fixture(scope="module")
def twins(registry: ModelRegistry, model_repository: Path) -> dict[str, Twin]:
    return zoo(registry, model_repository)


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize(
    ("method", "params", "oracle"),
    CASES,
    ids=[f"{m}-{'-'.join(f'{k}={v}' for k, v in p.items()) or 'default'}" for m, p, _ in CASES],
)
def test_matches_captum_on_the_eager_module(
    twins: dict[str, Twin],
    model_name: str,
    method: str,
    params: dict[str, object],
    oracle: Oracle,
) -> None:
    twin = twins[model_name]
    if method not in twin.model.config.methods:
        assert twin.layer is None  # only CAM methods are missing, on models without a layer
        return
    x = real_inputs(twin.model, 4)
    requested = [-1, 0, twin.model.num_classes - 1, -1]
    targets = resolved(twin.eager, x, requested)
    result = attribute(twin.model, method, x, requested, **params)  # type: ignore[arg-type]
    with warnings.catch_warnings():
        # Captum's notices about the hooks it sets on the eager module (EXPECTED_LIBRARY_WARNINGS)
        warnings.filterwarnings("ignore", "Setting (forward, )?backward hooks", UserWarning)
        expected = oracle(twin, x, targets).detach()
    assert torch.equal(result.targets, targets)
    assert float(expected.abs().max()) > 1e-3  # a real signal, not zeros on both sides
    assert_close(result.attributions, expected, 1e-5)


@pytest.mark.parametrize("model_name", MODELS)
def test_modularized_forward_is_the_eager_forward(twins: dict[str, Twin], model_name: str) -> None:
    twin = twins[model_name]
    x = real_inputs(twin.model, 6)
    with torch.no_grad():
        assert torch.equal(twin.model.module(x), twin.eager(x))
    leaves = {type(m) for m in twin.model.module.modules() if not list(m.children())}
    eager_leaves = {type(m) for m in twin.eager.modules() if not list(m.children())}
    assert eager_leaves <= leaves  # every layer is a module again (BatchNorm2d, MaxPool2d...)
    if twin.layer is not None:
        assert isinstance(twin.model.module.get_submodule(LAYER_MARKER), LayerMarker)
        assert Capability.LAYER in twin.model.capabilities


def _export(module: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1, max=1024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.export.export(module.eval(), (example,), dynamic_shapes=({0: batch},))


class _AvgPoolDivisor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(2, divisor_override=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(x), 1)


class _BatchNorm1dMlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("module", "shape", "rebuilt"),
    [
        (_AvgPoolDivisor(), (3, 1, 4, 4), nn.AvgPool2d),
        (_BatchNorm1dMlp(), (3, 4), nn.BatchNorm1d),
    ],
    ids=["avg_pool_divisor_override", "batch_norm_1d"],
)
def test_rebuilt_layers_keep_their_arguments(
    module: nn.Module, shape: tuple[int, ...], rebuilt: type[nn.Module]
) -> None:
    """Each rebuilt module computes what its aten call did (these two did not: the divisor
    was dropped, and BatchNorm1d became a BatchNorm2d that refuses 2-D inputs)."""
    torch.manual_seed(0)
    for buffer in module.buffers():
        if buffer.is_floating_point():  # running mean and variance
            buffer.uniform_(0.5, 1.5)
    x = torch.rand(shape)
    gm = modularize(_export(module, x[:2]), layer=None)
    with torch.no_grad():
        assert torch.equal(gm(x), module(x))
    assert any(type(m) is rebuilt for m in gm.modules())
