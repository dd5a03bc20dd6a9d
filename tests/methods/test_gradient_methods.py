"""Saliency, Input x Gradient, SmoothGrad and VarGrad against plain autograd.

What the methods differentiate is TargetScore: the model's raw output (logits for both demo
models) at the instance's target, -1 meaning the class predicted at the clean input. The oracle
here is the eager module with the same weights, differentiated one instance at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from method_support import (
    Twin,
    assert_close,
    attribute,
    real_inputs,
    resolved,
    target_gradients,
    zoo,
)
from sidelight.models.registry import ModelRegistry

DEMO = ["digits", "breast_cancer"]


@pytest.fixture(scope="module")
def twins(registry: ModelRegistry, model_repository: Path) -> dict[str, Twin]:
    return zoo(registry, model_repository)


def mixed_targets(num_classes: int) -> list[int]:
    """Per-instance targets: explicit classes, the predicted class, and a repeat."""
    return [num_classes - 1, -1, 0, 1 % num_classes, -1]


@pytest.mark.parametrize("name", DEMO)
@pytest.mark.parametrize("abs_", [True, False], ids=["abs", "signed"])
def test_saliency_is_the_gradient_of_the_target_logit(
    twins: dict[str, Twin], name: str, abs_: bool
) -> None:
    twin = twins[name]
    x = real_inputs(twin.model, 5)
    requested = mixed_targets(twin.model.num_classes)
    result = attribute(twin.model, "saliency", x, requested, abs=abs_)

    targets = resolved(twin.eager, x, requested)
    grads, logits = target_gradients(twin.eager, x, targets)
    assert torch.equal(result.targets, targets)
    assert_close(result.outputs, logits, 1e-6)
    assert_close(result.attributions, grads.abs() if abs_ else grads, 1e-5)
    # targets differ per instance, so the explained class must too: not all the same column
    assert len(set(targets.tolist())) > 1


@pytest.mark.parametrize("name", DEMO)
def test_input_x_gradient_is_input_times_gradient(twins: dict[str, Twin], name: str) -> None:
    twin = twins[name]
    x = real_inputs(twin.model, 5)
    requested = mixed_targets(twin.model.num_classes)
    result = attribute(twin.model, "input_x_gradient", x, requested)

    targets = resolved(twin.eager, x, requested)
    grads, _ = target_gradients(twin.eager, x, targets)
    assert torch.equal(result.targets, targets)
    assert_close(result.attributions, x * grads, 1e-5)


def seeded_noise(seed: int, samples: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The documented noise stream of a request: standard normal from a CPU generator."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((samples, *shape), generator=generator)


def noise_tunnel_by_hand(
    twin: Twin,
    x: torch.Tensor,
    requested: list[int],
    seeds: list[int],
    *,
    samples: int,
    noise_level: float,
    base: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, population variance) of the base attribution over the noisy copies, by a loop."""
    targets = resolved(twin.eager, x, requested)  # classes at the clean inputs
    means, variances = [], []
    for xi, ti, seed in zip(x, targets.tolist(), seeds, strict=True):
        sigma = noise_level * float(xi.max() - xi.min())
        per_sample = []
        for noise in seeded_noise(seed, samples, tuple(xi.shape)):
            noisy = xi + sigma * noise
            (grad,), _ = target_gradients(twin.eager, noisy[None], torch.tensor([ti]))
            per_sample.append(grad.abs() if base == "saliency" else noisy * grad)
        stacked = torch.stack(per_sample).double()
        means.append(stacked.mean(0))
        variances.append(((stacked - stacked.mean(0)) ** 2).mean(0))
    return torch.stack(means), torch.stack(variances)


@pytest.mark.parametrize("name", DEMO)
@pytest.mark.parametrize("base", ["saliency", "input_x_gradient"])
def test_smoothgrad_and_vargrad_match_an_explicit_loop(
    twins: dict[str, Twin], name: str, base: str
) -> None:
    twin = twins[name]
    x = real_inputs(twin.model, 3)
    requested = [-1, 0, -1]
    seeds = [11, 11, 2024]  # two instances of one request share its noise, a third has its own
    params: dict[str, Any] = {"samples": 6, "noise_level": 0.2, "base": base}
    mean, variance = noise_tunnel_by_hand(twin, x, requested, seeds, **params)

    smooth = attribute(twin.model, "smoothgrad", x, requested, seeds, **params)
    var = attribute(twin.model, "vargrad", x, requested, seeds, **params)
    assert torch.equal(smooth.targets, resolved(twin.eager, x, requested))
    assert_close(smooth.attributions, mean, 1e-5)
    assert_close(var.attributions, variance, 1e-5)
    assert float(variance.abs().max()) > 0  # the noise did change the gradients


def test_noise_depends_on_the_seed_only(twins: dict[str, Twin]) -> None:
    """Another seed gives other noise; the same seed in another batch position, the same."""
    twin = twins["breast_cancer"]
    x = real_inputs(twin.model, 2)
    one = attribute(twin.model, "smoothgrad", x, seeds=[5, 6], samples=4)
    swapped = attribute(twin.model, "smoothgrad", x.flip(0), seeds=[6, 5], samples=4)
    other = attribute(twin.model, "smoothgrad", x, seeds=[7, 6], samples=4)
    assert_close(one.attributions, swapped.attributions.flip(0), 1e-6)
    assert not torch.allclose(one.attributions[0], other.attributions[0])
    assert_close(one.attributions[1], other.attributions[1], 1e-6)
