"""lime, occlusion and rise (and kernel_shap once more) against independent computations:
scikit-learn's Ridge for the surrogate, closed forms on models whose probability is linear
in the input, Captum's Occlusion, and the RISE estimator recomputed in numpy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from captum.attr import Occlusion as CaptumOcclusion
from conftest import linear_model
from method_support import digit_images
from sidelight.methods.base import Batch
from sidelight.methods.catalog import METHODS, parse_params
from sidelight.methods.lime import weighted_ridge
from sidelight.methods.perturbation import generator
from sidelight.methods.rise import coarse_masks, upsample_masks
from sidelight.models.model import Model
from sidelight.models.registry import ModelRegistry
from sklearn.linear_model import Ridge

CPU = torch.device("cpu")
WEIGHTS = torch.tensor([0.02, -0.03, 0.05, 0.0, 0.01])


@pytest.fixture(scope="module")
def linear_rows(tmp_path_factory: pytest.TempPathFactory) -> Model:
    background = np.random.default_rng(0).normal(size=(16, 5)) * np.array([1, 2, 0.5, 1, 3])
    return linear_model(
        tmp_path_factory.mktemp("linear"), "rows", WEIGHTS, [5], ["lime", "kernel_shap"], background
    )


@pytest.fixture(scope="module")
def linear_image(tmp_path_factory: pytest.TempPathFactory) -> Model:
    weights = torch.linspace(-0.01, 0.01, 64)
    return linear_model(
        tmp_path_factory.mktemp("linear"), "image", weights, [1, 8, 8], ["lime"], None
    )


def run(
    model: Model, name: str, inputs: torch.Tensor, targets: Any = -1, seed: int = 3, **params: Any
) -> Any:
    method = METHODS[name]
    n = inputs.shape[0]
    batch = Batch(
        inputs,
        torch.as_tensor(targets, dtype=torch.int64).expand(n).clone(),
        torch.full((n,), seed, dtype=torch.int64),
    )
    parsed = parse_params(method, params)
    method.check_params(model, parsed)
    return method.attribute(model, batch, parsed, 4096)


def test_the_weighted_ridge_is_scikit_learns() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 40, 6))
    y = rng.normal(size=(3, 40))
    w = rng.uniform(0.1, 2.0, size=(3, 40))
    for alpha in (0.0, 1.0, 7.5):
        coefficients, intercepts, r2 = weighted_ridge(
            torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(w), alpha
        )
        for n in range(3):
            reference = Ridge(alpha=alpha).fit(x[n], y[n], sample_weight=w[n])
            np.testing.assert_allclose(coefficients[n].numpy(), reference.coef_, atol=1e-9)
            np.testing.assert_allclose(float(intercepts[n]), reference.intercept_, atol=1e-9)
            score = reference.score(x[n], y[n], sample_weight=w[n])
            np.testing.assert_allclose(float(r2[n]), score, atol=1e-9)


def test_tabular_lime_recovers_a_linear_model(linear_rows: Model) -> None:
    """On p = 0.5 + w . x the surrogate on standardised differences is exact: each
    coefficient is w_j times the feature's training standard deviation, R² = 1."""
    rows = torch.tensor([[0.5, -1.0, 2.0, 0.0, 1.0], [1.0, 1.0, -2.0, 3.0, 0.0]])
    result = run(linear_rows, "lime", rows, targets=1, n_samples=300, alpha=1e-9)
    assert linear_rows.background is not None
    expected = WEIGHTS * linear_rows.background.std
    torch.testing.assert_close(result.attributions, expected.expand(2, -1), atol=1e-6, rtol=1e-5)
    assert torch.all(result.local_fidelity > 1 - 1e-9)
    other = run(linear_rows, "lime", rows, targets=0, n_samples=300, alpha=1e-9)
    torch.testing.assert_close(other.attributions, -expected.expand(2, -1), atol=1e-6, rtol=1e-5)


def test_image_lime_recovers_each_cells_contribution(linear_image: Model) -> None:
    """Hidden cells become the zero baseline, so p(z) = 0.5 + sum_k z_k (w . x on cell k):
    the surrogate's coefficient of a cell is exactly that cell's w . x."""
    images = digit_images(2)
    result = run(
        linear_image,
        "lime",
        images,
        targets=1,
        n_samples=200,
        alpha=1e-9,
        segmentation="grid",
        grid_cells=4,
        hide="baseline",
    )
    weights = torch.linspace(-0.01, 0.01, 64).reshape(1, 8, 8)
    cell = (torch.arange(8)[:, None] // 2) * 4 + torch.arange(8)[None, :] // 2
    for n in range(2):
        contribution = (weights * images[n]).reshape(-1)
        expected = torch.zeros(16).scatter_add_(0, cell.reshape(-1), contribution.double().float())
        per_cell = torch.zeros(16).scatter_add_(
            0, cell.reshape(-1), result.attributions[n].reshape(-1)
        )
        torch.testing.assert_close(per_cell, expected, atol=1e-6, rtol=1e-4)
    assert torch.all(result.local_fidelity > 1 - 1e-9)


def test_image_lime_on_superpixels_reports_its_fidelity(registry: ModelRegistry) -> None:
    model = registry.get("digits").primary
    images = digit_images(3)
    result = run(model, "lime", images, n_samples=300, segmentation="slic", n_segments=12)
    assert result.attributions.shape == images.shape
    assert result.local_fidelity.shape == (3,)
    assert torch.all((result.local_fidelity > 0) & (result.local_fidelity <= 1))
    # Every pixel of one superpixel carries the same share: the map is piecewise constant.
    assert len(torch.unique(result.attributions[0])) <= 40


def test_kernel_shap_on_a_linear_model_is_w_times_the_distance_to_the_mean(
    linear_rows: Model,
) -> None:
    """For a linear model, interventional Shapley values are w_j (x_j - E[b_j])."""
    rows = torch.tensor([[0.5, -1.0, 2.0, 0.0, 1.0]])
    assert linear_rows.background is not None
    expected = WEIGHTS * (rows[0] - linear_rows.background.tensor.mean(0))
    result = run(linear_rows, "kernel_shap", rows, targets=1, n_samples=24)
    torch.testing.assert_close(result.attributions[0], expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(("window", "stride"), [(2, 2), (3, 1), (4, 2)])
def test_occlusion_equals_captums(registry: ModelRegistry, window: int, stride: int) -> None:
    model = registry.get("digits").primary
    images = digit_images(3)
    result = run(model, "occlusion", images, targets=[-1, 3, 7], window=window, stride=stride)

    def probabilities(x: torch.Tensor) -> torch.Tensor:
        return model.probabilities(model.module(x))

    expected = CaptumOcclusion(probabilities).attribute(
        images,
        sliding_window_shapes=(1, window, window),
        strides=(1, stride, stride),
        baselines=0.0,
        target=result.targets,
    )
    torch.testing.assert_close(result.attributions, expected, atol=1e-6, rtol=1e-5)


def test_rise_is_its_estimator(registry: ModelRegistry) -> None:
    """S = sum_i f(x M_i + b (1 - M_i)) M_i / (N p), recomputed in numpy from the masks."""
    model = registry.get("digits").primary
    images = digit_images(2)
    result = run(model, "rise", images, seed=5, n_masks=64, grid=4, keep=0.5)
    batch = Batch(images, torch.full((2,), -1), torch.full((2,), 5))
    cells, shifts = coarse_masks(generator(batch), 64, 4, 0.5, 8, 8)
    masks = upsample_masks(cells, shifts, 8, 8).numpy().astype(np.float64)
    x = images.numpy().astype(np.float64)
    for n in range(2):
        target = int(result.targets[n])
        total = np.zeros((8, 8))
        for mask in masks:
            masked = (x[n] * mask).astype(np.float32)[None]
            with torch.no_grad():
                p = model.probabilities(model.module(torch.from_numpy(masked)))[0, target]
            total += float(p) * mask
        expected = total / (64 * 0.5)
        np.testing.assert_allclose(result.attributions[n, 0].double().numpy(), expected, atol=1e-5)


def test_rise_masks_keep_the_asked_fraction_and_find_what_the_model_sees(
    tmp_path: Path,
) -> None:
    rng = torch.Generator().manual_seed(0)
    cells, shifts = coarse_masks(rng, 2000, 7, 0.3, 56, 56)
    masks = upsample_masks(cells, shifts, 56, 56)
    assert abs(float(masks.mean()) - 0.3) < 0.02
    assert float(masks.min()) >= 0 and float(masks.max()) <= 1
    # A model that only looks at the top-left quarter of the image.
    weights = torch.zeros(1, 8, 8)
    weights[0, :4, :4] = 0.03
    model = linear_model(tmp_path, "corner", weights, [1, 8, 8], ["rise"], None)
    result = run(model, "rise", torch.ones(1, 1, 8, 8), targets=1, n_masks=2000, grid=4)
    saliency = result.attributions[0, 0]
    assert float(saliency[:4, :4].mean()) > float(saliency[4:, 4:].mean()) + 0.05
