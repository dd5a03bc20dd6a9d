"""DeepLIFT completeness and LRP-epsilon against relevance propagation written out here."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from method_support import Twin, assert_close, attribute, real_inputs, resolved, zoo
from sidelight.models.registry import ModelRegistry
from torch import nn


@pytest.fixture(scope="module")
def twins(registry: ModelRegistry, model_repository: Path) -> dict[str, Twin]:
    return zoo(registry, model_repository)


@pytest.mark.parametrize("name", ["digits", "breast_cancer", "pooled", "deep_cam"])
def test_deeplift_is_complete(twins: dict[str, Twin], name: str) -> None:
    """sum(attributions) = f_t(x) - f_t(baseline) for every class, gaps from the eager
    model; and the completeness error the service reports is exactly that residue."""
    twin = twins[name]
    x = real_inputs(twin.model, 4)
    classes = twin.model.num_classes
    inputs = x.repeat_interleave(classes, 0)
    targets = torch.arange(classes).repeat(4)
    result = attribute(twin.model, "deeplift", inputs, targets)

    with torch.no_grad():
        gap = twin.eager(inputs) - twin.eager(twin.model.baseline().tensor)
    gap_t = gap.gather(1, targets[:, None])[:, 0].double()
    total = result.attributions.reshape(len(inputs), -1).double().sum(1)
    assert float((total - gap_t).abs().max()) <= 1e-4 * max(1.0, float(gap_t.abs().max()))
    assert result.completeness_error is not None and result.reference_gap is not None
    assert_close(result.reference_gap, gap_t, 1e-6)
    # float32 residues of float32 sums: compare at the scale of the gap
    assert_close(result.completeness_error, total - gap_t, 0, 1e-6 * float(gap_t.abs().max()))


def test_deeplift_uses_the_named_baseline(twins: dict[str, Twin]) -> None:
    twin = twins["breast_cancer"]
    x = real_inputs(twin.model, 3)
    result = attribute(twin.model, "deeplift", x, baseline="zero")
    targets = resolved(twin.eager, x, [-1, -1, -1])
    with torch.no_grad():
        gap = (twin.eager(x) - twin.eager(torch.zeros(1, 30))).gather(1, targets[:, None])[:, 0]
    total = result.attributions.sum(1)
    assert float((total - gap).abs().max()) <= 1e-4 * float(gap.abs().max())
    default = attribute(twin.model, "deeplift", x)  # the mean baseline: another split
    assert float((default.attributions - result.attributions).abs().max()) > 1e-2


def lrp_epsilon_mlp(
    weights: list[npt.NDArray[np.float64]],
    x: npt.NDArray[np.float64],
    target: int,
    epsilon: float,
) -> npt.NDArray[np.float64]:
    """LRP-epsilon for a bias-free ReLU MLP, in float64, straight from the formula:

        R_i = sum_j a_i w_ji / (z_j + epsilon sign(z_j)) R_j,   z_j = sum_i a_i w_ji

    starting from R = f_t(x) at the target output (sign(0) = +1, as Captum); ReLUs pass
    relevance through unchanged.
    """
    activations = [x]
    for k, w in enumerate(weights):
        z = w @ activations[-1]
        activations.append(np.maximum(z, 0) if k < len(weights) - 1 else z)
    relevance = np.zeros_like(activations[-1])
    relevance[target] = activations[-1][target]
    for w, a in zip(reversed(weights), reversed(activations[:-1]), strict=True):
        z = w @ a
        stabilised = z + epsilon * np.where(z >= 0, 1.0, -1.0)
        relevance = np.array(
            [
                sum(a[i] * w[j, i] / stabilised[j] * relevance[j] for j in range(len(z)))
                for i in range(len(a))
            ]
        )
    return relevance


@pytest.mark.parametrize("epsilon", [1e-9, 0.05, 2.0])
def test_lrp_epsilon_matches_the_formula_on_a_bias_free_mlp(
    twins: dict[str, Twin], epsilon: float
) -> None:
    twin = twins["bias_free"]
    x = real_inputs(twin.model, 5)
    requested = [0, 1, 2, -1, -1]
    result = attribute(twin.model, "lrp", x, requested, epsilon=epsilon)

    targets = resolved(twin.eager, x, requested)
    weights = [
        layer.weight.detach().double().numpy()
        for layer in twin.eager.modules()
        if isinstance(layer, nn.Linear)
    ]
    expected = np.stack(
        [
            lrp_epsilon_mlp(weights, xi.double().numpy(), t, epsilon)
            for xi, t in zip(x, targets.tolist(), strict=True)
        ]
    )
    assert_close(result.attributions, expected, 1e-5)
    # without biases, relevance is conserved up to what epsilon absorbs
    assert result.completeness_error is not None and result.reference_gap is not None
    conserved = expected.sum(1) - result.reference_gap.double().numpy()
    scale = float(result.reference_gap.abs().max())
    assert_close(result.completeness_error, conserved, 0, 1e-5 * scale)
    if epsilon < 1e-6:
        assert float(result.completeness_error.abs().max()) <= 1e-4 * float(
            result.reference_gap.abs().max()
        )


def lrp_epsilon_digits(
    model: nn.Module, x: torch.Tensor, targets: torch.Tensor, epsilon: float
) -> torch.Tensor:
    """LRP-epsilon on DigitsCnn layer by layer, each step R_in = a * d(z . s)/da with
    s = R_out / (z + eps sign z) held constant (the standard way to write the rule for
    convolutions, Montavon et al. 2019). Biases count in z, as in Captum's EpsilonRule."""
    model = copy.deepcopy(model).double()
    features = model.get_submodule("features")
    assert isinstance(features, nn.Sequential)
    layers = [*features, model.get_submodule("pool"), nn.Flatten(), model.get_submodule("fc")]
    activations = [x.double()]
    for layer in layers:
        activations.append(layer(activations[-1]))
    out = activations[-1]
    relevance = torch.zeros_like(out)
    rows = torch.arange(len(x))
    relevance[rows, targets] = out[rows, targets]
    for layer, a in zip(reversed(layers), reversed(activations[:-1]), strict=True):
        if isinstance(layer, nn.ReLU):
            continue  # relevance passes through
        if isinstance(layer, nn.Flatten):
            relevance = relevance.reshape(a.shape)
            continue
        leaf = a.detach().double().requires_grad_(True)
        with torch.enable_grad():
            z = layer(leaf)
            s = (relevance / (z + epsilon * torch.where(z >= 0, 1.0, -1.0))).detach()
            (c,) = torch.autograd.grad((z * s).sum(), leaf)
        relevance = leaf.detach() * c
    return relevance


def test_lrp_epsilon_matches_the_rule_on_the_digits_cnn(twins: dict[str, Twin]) -> None:
    """The CAM-layer marker sits between the last ReLU and the pooling: relevance must pass
    it untouched (it did not: the maps were off by more than their own magnitude)."""
    twin = twins["digits"]
    x = real_inputs(twin.model, 4)
    requested = [-1, 3, 7, -1]
    targets = resolved(twin.eager, x, requested)
    result = attribute(twin.model, "lrp", x, requested, epsilon=1e-3)
    expected = lrp_epsilon_digits(twin.eager, x, targets, 1e-3)
    assert_close(result.attributions, expected, 1e-5)
