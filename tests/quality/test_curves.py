"""Deletion and insertion curves against a plain loop, and what the demo models show: the
methods' maps beat random rankings (lower deletion AUC, higher insertion AUC)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sidelight.methods.base import Batch
from sidelight.methods.catalog import METHODS, parse_params
from sidelight.models.model import Model
from sidelight.models.registry import ModelRegistry
from sidelight.quality.curves import (
    Curve,
    Reference,
    blurred,
    curve,
    element_scores,
    random_curve,
)
from sklearn.datasets import load_breast_cancer, load_digits


def digit_images(count: int, start: int = 1500) -> torch.Tensor:
    images = load_digits().images[start : start + count] / 16.0
    return torch.from_numpy(images.astype(np.float32)[:, None])


def cancer_rows(count: int, start: int = 400) -> torch.Tensor:
    return torch.from_numpy(load_breast_cancer().data[start : start + count].astype(np.float32))


def looped_curve(
    model: Model,
    x: np.ndarray,
    scores: np.ndarray,
    target: int,
    kind: str,
    steps: int,
    filler: np.ndarray,
) -> np.ndarray:
    """One instance, step by step, element by element, in numpy."""
    count = scores.size
    order = np.argsort(-scores, kind="stable")
    found = []
    for k in range(steps + 1):
        chosen = order[: int(np.round(k * count / steps))]
        if kind == "deletion":
            row = x.copy()
            flat, source = (
                row.reshape(row.shape[0], -1) if x.ndim == 3 else row.reshape(1, -1),
                filler,
            )
        else:
            row = filler.copy()
            flat, source = row.reshape(row.shape[0], -1) if x.ndim == 3 else row.reshape(1, -1), x
        flat_source = source.reshape(flat.shape)
        flat[:, chosen] = flat_source[:, chosen]
        with torch.no_grad():
            p = model.probabilities(model.module(torch.from_numpy(row[None])))[0, target]
        found.append(float(p))
    return np.array(found)


def attribute(model: Model, method: str, inputs: torch.Tensor, **params: object) -> torch.Tensor:
    n = inputs.shape[0]
    result = METHODS[method].attribute(
        model,
        Batch(inputs, torch.full((n,), -1), torch.full((n,), 1)),
        parse_params(METHODS[method], params),
        4096,
    )
    return result.attributions


@pytest.mark.parametrize("kind", ["deletion", "insertion"])
@pytest.mark.parametrize("reference", ["baseline", "blur"])
def test_image_curves_equal_a_plain_loop(
    registry: ModelRegistry, kind: str, reference: str
) -> None:
    model = registry.get("digits").primary
    images = digit_images(3)
    maps = attribute(model, "integrated_gradients", images, n_steps=16)
    scores = element_scores(maps, images)
    targets = torch.tensor([1, 4, 7])
    result = curve(
        model,
        images,
        scores,
        targets,
        Curve(kind),
        steps=8,
        reference=Reference(reference),
        max_rows=5,
    )
    filler = (blurred(images) if reference == "blur" else torch.zeros_like(images)).numpy()
    for n in range(3):
        expected = looped_curve(
            model, images[n].numpy(), scores[n].numpy(), int(targets[n]), kind, 8, filler[n]
        )
        np.testing.assert_allclose(result.curves[n].numpy(), expected, atol=1e-6)
        np.testing.assert_allclose(
            float(result.auc[n]), np.trapezoid(expected, np.linspace(0, 1, 9)), atol=1e-6
        )
    assert result.evaluations == 3 * 9


def test_tabular_curves_equal_a_plain_loop(registry: ModelRegistry) -> None:
    model = registry.get("breast_cancer").primary
    rows = cancer_rows(2)
    scores = torch.randn(2, 30, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 1])
    result = curve(model, rows, scores, targets, Curve.DELETION, steps=10)
    filler = model.baseline().tensor.expand_as(rows).numpy()
    for n in range(2):
        expected = looped_curve(
            model, rows[n].numpy(), scores[n].numpy(), int(targets[n]), "deletion", 10, filler[n]
        )
        np.testing.assert_allclose(result.curves[n].numpy(), expected, atol=1e-6)


def test_the_blur_is_a_normalised_gaussian(registry: ModelRegistry) -> None:
    constant = torch.full((1, 3, 16, 16), 0.7)
    torch.testing.assert_close(blurred(constant), constant)
    impulse = torch.zeros(1, 1, 31, 31)
    impulse[0, 0, 15, 15] = 1.0
    spread = blurred(impulse, sigma=2.0)[0, 0]
    assert abs(float(spread.sum()) - 1.0) < 1e-5
    centre = float(spread[15, 15])
    assert abs(float(spread[15, 17]) / centre - np.exp(-4 / 8)) < 1e-4


def test_random_baselines_are_reproducible(registry: ModelRegistry) -> None:
    model = registry.get("digits").primary
    images = digit_images(2)
    targets = torch.tensor([1, 2])
    first = random_curve(model, images, targets, Curve.DELETION, seed=3)
    again = random_curve(model, images, targets, Curve.DELETION, seed=3)
    assert torch.equal(first.auc, again.auc)
    assert first.evaluations == 4 * 2 * 17


@pytest.mark.parametrize(
    ("model_name", "method", "params"),
    [
        ("digits", "grad_cam", {}),
        ("digits", "integrated_gradients", {"n_steps": 32}),
        ("digits", "kernel_shap", {"n_samples": 256, "grid_cells": 4, "seed": 1}),
        ("breast_cancer", "integrated_gradients", {"n_steps": 32}),
        ("breast_cancer", "kernel_shap", {"n_samples": 256, "seed": 1}),
    ],
)
def test_the_demo_models_explanations_beat_random_rankings(
    registry: ModelRegistry, model_name: str, method: str, params: dict[str, object]
) -> None:
    """Issue 4's demand on the demo models: deletion AUC below the random baseline and
    insertion AUC above it, on average over held-out instances.

    Images use the blurred reference: most of a digit's pixels are already zero, so with the
    zero baseline a coarse map (Grad-CAM's top pixels include background near the strokes)
    deletes nothing for its first steps, and its deletion AUC sits at chance (0.371 against
    0.388; blurred, 0.389 against 0.539)."""
    model = registry.get(model_name).primary
    reference = Reference.BLUR if model_name == "digits" else Reference.BASELINE
    inputs = digit_images(24) if model_name == "digits" else cancer_rows(24)
    with torch.no_grad():
        targets = model.module(inputs).argmax(1)
    maps = attribute(model, method, inputs, **params)
    scores = element_scores(maps, inputs)
    for kind, better in ((Curve.DELETION, -1.0), (Curve.INSERTION, 1.0)):
        found = curve(model, inputs, scores, targets, kind, reference=reference).auc.mean()
        chance = random_curve(model, inputs, targets, kind, reference=reference).auc.mean()
        assert better * float(found - chance) > 0.02, (kind.value, float(found), float(chance))
