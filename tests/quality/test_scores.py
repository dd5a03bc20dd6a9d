"""Infidelity and max-sensitivity: closed forms on a model whose probability is linear in its
input, and a check that they rank a faithful map above a scrambled one on a real model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import linear_model
from sidelight.methods.catalog import METHODS, parse_params
from sidelight.models.model import Model
from sidelight.models.registry import ModelRegistry
from sidelight.quality.scores import infidelity, max_sensitivity
from sklearn.datasets import load_digits

WEIGHTS = torch.tensor([0.02, -0.03, 0.05, 0.0, 0.01])


@pytest.fixture(scope="module")
def linear(tmp_path_factory: pytest.TempPathFactory) -> Model:
    return linear_model(
        tmp_path_factory.mktemp("linear"), "rows", WEIGHTS, [5], ["saliency", "input_x_gradient"]
    )


def rows() -> torch.Tensor:
    return torch.tensor([[0.5, -1.0, 2.0, 0.0, 1.0], [1.0, 1.0, -2.0, 3.0, 0.5]])


def test_the_gradient_of_a_linear_model_has_zero_infidelity(linear: Model) -> None:
    """I . w - (f(x) - f(x - I)) = I . w - w . I = 0 for every perturbation."""
    x = rows()
    found = infidelity(
        linear, x, WEIGHTS.expand(2, -1), torch.tensor([1, 1]), sigma=0.5, normalize=False
    )
    assert float(found.abs().max()) < 1e-10


def test_a_doubled_map_has_the_noise_variance_times_its_excess(linear: Model) -> None:
    """With attr = 2w the residual is I . w: its mean square tends to sigma^2 |w|^2."""
    x = rows()
    sigma = 0.5
    doubled = 2 * WEIGHTS.expand(2, -1)
    found = infidelity(
        linear, x, doubled, torch.tensor([1, 1]), sigma=sigma, samples=4000, normalize=False
    )
    expected = sigma**2 * float((WEIGHTS**2).sum())
    np.testing.assert_allclose(found.numpy(), expected, rtol=0.1)
    # Normalised (the default), the map is rescaled by its best factor (1/2): scale is moot.
    rescaled = infidelity(linear, x, doubled, torch.tensor([1, 1]), sigma=sigma, samples=64)
    assert float(rescaled.abs().max()) < 1e-8


def test_a_constant_explanation_has_zero_sensitivity(linear: Model) -> None:
    """Saliency of a linear model is |w| wherever x is."""
    method = METHODS["saliency"]
    found = max_sensitivity(
        linear, method, parse_params(method, {}), rows(), torch.tensor([1, 1]), radius=0.3
    )
    assert float(found.abs().max()) < 1e-6


def test_input_times_gradient_moves_at_most_as_far_as_the_input(linear: Model) -> None:
    """e(x) = x * w, so ||e(x') - e(x)|| / ||e(x)|| <= r |w| / ||x * w|| in the L-inf ball r."""
    method = METHODS["input_x_gradient"]
    x, radius = rows(), 0.05
    found = max_sensitivity(
        linear, method, parse_params(method, {}), x, torch.tensor([1, 1]), radius=radius
    )
    bound = radius * float(WEIGHTS.norm()) / (x * WEIGHTS).norm(dim=1)
    assert torch.all(found > 0)
    assert torch.all(found <= bound.double() + 1e-9)


def test_infidelity_prefers_a_real_map_to_a_scrambled_one(registry: ModelRegistry) -> None:
    model = registry.get("digits").primary
    images = torch.from_numpy((load_digits().images[1500:1516] / 16.0).astype(np.float32)[:, None])
    with torch.no_grad():
        targets = model.module(images).argmax(1)
    method = METHODS["integrated_gradients"]
    from sidelight.methods.base import Batch

    maps = method.attribute(
        model,
        Batch(images, targets, torch.zeros(16, dtype=torch.int64)),
        parse_params(method, {"n_steps": 32}),
        4096,
    ).attributions
    scrambled = maps.reshape(16, -1)[
        :, torch.randperm(64, generator=torch.Generator().manual_seed(0))
    ].reshape(maps.shape)
    real = infidelity(model, images, maps, targets, sigma=0.05, samples=32)
    shuffled = infidelity(model, images, scrambled, targets, sigma=0.05, samples=32)
    assert float(real.mean()) < float(shuffled.mean())


def test_scores_are_reproducible(linear: Model, tmp_path: Path) -> None:
    x = rows()
    first = infidelity(linear, x, 2 * WEIGHTS.expand(2, -1), torch.tensor([1, 0]), seed=4)
    again = infidelity(linear, x, 2 * WEIGHTS.expand(2, -1), torch.tensor([1, 0]), seed=4)
    assert torch.equal(first, again)
