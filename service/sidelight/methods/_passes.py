"""Shared steps of the gradient and CAM methods: one pass through TargetScore, completeness,
upsampling. Kept apart so each method file holds only what makes that method itself."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from sidelight.methods.base import (
    Attribution,
    Batch,
    TargetScore,
    gather_target,
    sum_per_instance,
    with_grad,
)
from sidelight.models.model import Model


def single_pass(
    model: Model,
    batch: Batch,
    attribute: Callable[[TargetScore, torch.Tensor], torch.Tensor],
    *,
    evaluations: int = 1,
    sign: float = 1.0,
) -> Attribution:
    """Run `attribute(score, inputs)` once; outputs and targets come from its own forward."""
    score = TargetScore(model.module, batch.targets, sign=sign)
    with torch.enable_grad():
        attributions = attribute(score, with_grad(batch.inputs)).detach()
    outputs, targets = score.resolved()
    return Attribution(attributions, outputs, targets, evaluations)


def completeness(
    attributions: torch.Tensor,
    outputs: torch.Tensor,
    targets: torch.Tensor,
    reference_outputs: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum(attributions) - gap, gap) with gap = f(x) - f(reference) at the target (N each)."""
    gap = gather_target(outputs, targets)
    if reference_outputs is not None:
        gap = gap - gather_target(reference_outputs.expand_as(outputs), targets)
    return sum_per_instance(attributions) - gap, gap


def upsample(maps: torch.Tensor, input_shape: torch.Size) -> torch.Tensor:
    """N x 1 x h x w layer maps -> N x 1 x H x W at the input's spatial size (bilinear)."""
    size = tuple(input_shape[-2:])
    if tuple(maps.shape[-2:]) == size:
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def layer_activations_and_gradients(
    model: Model, batch: Batch
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A, dScore/dA, outputs, targets) at the CAM layer, from one forward and one backward."""
    assert model.layer is not None
    captured: list[torch.Tensor] = []
    handle = model.layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    score = TargetScore(model.module, batch.targets)
    try:
        with torch.enable_grad():
            selected = score(with_grad(batch.inputs))
            (gradients,) = torch.autograd.grad(selected.sum(), captured[0])
    finally:
        handle.remove()
    outputs, targets = score.resolved()
    return captured[0].detach(), gradients, outputs, targets
