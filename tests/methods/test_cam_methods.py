"""CAM, Grad-CAM (plain and counterfactual) and Grad-CAM++ against hand computations on the
eager module's activations and gradients at the CAM layer (forward hook + plain autograd)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from method_support import (
    Twin,
    assert_close,
    attribute,
    layer_activations_and_gradients,
    layer_capture,
    real_inputs,
    resolved,
    upsample_like,
    zoo,
)
from sidelight.models.registry import ModelRegistry

GAP_LINEAR = ["digits", "pooled"]  # CAM layer -> global average pooling -> linear `fc`
LAYERED = ["digits", "pooled", "deep_cam"]


@pytest.fixture(scope="module")
def twins(registry: ModelRegistry, model_repository: Path) -> dict[str, Twin]:
    return zoo(registry, model_repository)


def batch_for(twin: Twin) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    x = real_inputs(twin.model, 4)
    requested = [-1, 0, twin.model.num_classes - 1, 1]
    return x, requested, resolved(twin.eager, x, requested)


@pytest.mark.parametrize("name", GAP_LINEAR)
def test_cam_is_classifier_weights_times_activations(twins: dict[str, Twin], name: str) -> None:
    twin = twins[name]
    x, requested, targets = batch_for(twin)
    assert twin.layer is not None
    with layer_capture(twin.layer) as captured, torch.no_grad():
        twin.eager(x)
    activations = captured[0].double()  # N x K x h x w
    fc = twin.eager.get_submodule("fc")
    assert isinstance(fc, torch.nn.Linear)
    weights = fc.weight.double()[targets]  # N x K
    maps = (weights[:, :, None, None] * activations).sum(1, keepdim=True)
    expected = upsample_like(maps, x.double())

    result = attribute(twin.model, "cam", x, requested)
    assert torch.equal(result.targets, targets)
    assert result.attributions.shape == (4, 1, 8, 8)
    assert_close(result.attributions, expected, 1e-5)


@pytest.mark.parametrize("name", GAP_LINEAR)
def test_cam_is_h_w_times_grad_cam_without_relu(twins: dict[str, Twin], name: str) -> None:
    """With GAP + linear, d score / dA_kij = W_ck / (h w) everywhere, so Grad-CAM's channel
    weights are W_ck / (h w): CAM = h w x Grad-CAM (no ReLU), upsampling being linear."""
    twin = twins[name]
    x, requested, _ = batch_for(twin)
    assert twin.layer is not None
    with layer_capture(twin.layer) as captured, torch.no_grad():
        twin.eager(x)
    h, w = captured[0].shape[-2:]
    cam = attribute(twin.model, "cam", x, requested).attributions
    grad_cam = attribute(twin.model, "grad_cam", x, requested, relu=False).attributions
    assert (h, w) == ((8, 8) if name == "digits" else (4, 4))
    assert_close(cam, h * w * grad_cam, 1e-5)
    assert float(cam.min()) < 0  # without the ReLU the maps do go negative


def grad_cam_by_hand(
    activations: torch.Tensor, gradients: torch.Tensor, *, relu: bool
) -> torch.Tensor:
    """sum_k mean_ij(g_kij) A_k, rectified or not (Selvaraju et al. 2017)."""
    weights = gradients.double().mean(dim=(2, 3), keepdim=True)
    maps = (weights * activations.double()).sum(1, keepdim=True)
    return maps.clamp_min(0) if relu else maps


@pytest.mark.parametrize("name", LAYERED)
@pytest.mark.parametrize("counterfactual", [False, True])
@pytest.mark.parametrize("relu", [True, False])
def test_grad_cam_and_its_counterfactual(
    twins: dict[str, Twin], name: str, counterfactual: bool, relu: bool
) -> None:
    """counterfactual=True is Grad-CAM of the negated gradient (the regions whose presence
    lowers the class score); the target is still the requested / predicted class."""
    twin = twins[name]
    x, requested, targets = batch_for(twin)
    activations, gradients = layer_activations_and_gradients(twin, x, targets)
    sign = -1.0 if counterfactual else 1.0
    expected = upsample_like(grad_cam_by_hand(activations, sign * gradients, relu=relu), x)

    result = attribute(
        twin.model, "grad_cam", x, requested, counterfactual=counterfactual, relu=relu
    )
    assert torch.equal(result.targets, targets)
    assert float(expected.abs().max()) > 0
    assert_close(result.attributions, expected, 1e-5)


def grad_cam_plus_plus_by_hand(
    activations: npt.NDArray[np.float64],
    gradients: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """Chattopadhay et al. 2018, eq. 19 with the exponential score, in float64 numpy:

        alpha_kij = g_kij^2 / (2 g_kij^2 + sum_ab A_kab g_kij^3)   (0 where that is 0/0)
        w_k = sum_ij relu(g_kij) alpha_kij,   map = relu(sum_k w_k A_k)

    (the exp(score) factor of d exp(S)/dA is one positive number per instance, left out.)
    """
    n, k, h, w = activations.shape
    out = np.zeros((n, 1, h, w))
    for i in range(n):
        for c in range(k):
            a, g = activations[i, c], gradients[i, c]
            total = a.sum()
            weight = 0.0
            for y in range(h):
                for x in range(w):
                    denominator = 2 * g[y, x] ** 2 + total * g[y, x] ** 3
                    alpha = g[y, x] ** 2 / denominator if denominator != 0 else 0.0
                    weight += max(g[y, x], 0.0) * alpha
            out[i, 0] += weight * a
    return np.maximum(out, 0)


@pytest.mark.parametrize("name", LAYERED)
def test_grad_cam_plus_plus_is_the_closed_form(twins: dict[str, Twin], name: str) -> None:
    twin = twins[name]
    x, requested, targets = batch_for(twin)
    activations, gradients = layer_activations_and_gradients(twin, x, targets)
    maps = grad_cam_plus_plus_by_hand(activations.double().numpy(), gradients.double().numpy())
    expected = upsample_like(torch.from_numpy(maps), x.double())

    result = attribute(twin.model, "grad_cam_plus_plus", x, requested)
    assert torch.equal(result.targets, targets)
    assert float(expected.max()) > 0
    assert_close(result.attributions, expected, 1e-5)
    if name == "deep_cam":  # gradients vary over the layer: not Grad-CAM's channel means
        spread = gradients.amax(dim=(2, 3)) - gradients.amin(dim=(2, 3))
        assert float(spread.max()) > 1e-2
        grad_cam = attribute(twin.model, "grad_cam", x, requested).attributions
        spreads = []  # per instance: Grad-CAM++ / Grad-CAM is not one constant over the map
        for plus, plain in zip(result.attributions, grad_cam, strict=True):
            ratio = plus[plain > 1e-3] / plain[plain > 1e-3]
            spreads.append(float(ratio.std() / ratio.mean()))
        assert max(spreads) > 0.05, spreads
