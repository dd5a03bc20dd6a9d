"""Deletion and insertion curves (Samek et al. 2016 pixel flipping; Petsiuk et al. 2018, RISE):
how fast the explained class's probability falls when the most relevant elements are removed
first, and how fast it rises when they are inserted first into a reference.

For each instance the elements (pixels across channels for images, features for rows) are
ranked by attribution, largest first. At step k of `steps`, the first round(k P / steps) of the
P elements are replaced by the reference (deletion) or taken from the input into the reference
(insertion), and the model gives the probability of the instance's target. The area under the
curve over the fraction removed (trapezoid rule on [0, 1]) summarises it: a faithful map has a
low deletion AUC and a high insertion AUC. The same curves for random rankings are the
baseline a score is read against.

All instances and steps of a round go through the model in one call, on the model's device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import torch
import torch.nn.functional as F

from sidelight.models.model import Model


class Curve(StrEnum):
    DELETION = "deletion"
    INSERTION = "insertion"


class Reference(StrEnum):
    BASELINE = "baseline"  # the model's default baseline (zero for the demo image model)
    BLUR = "blur"  # the input blurred (RISE's insertion reference); images only


@dataclass(frozen=True)
class CurveResult:
    curves: torch.Tensor  # N x (steps + 1) probabilities of the target, fraction 0 ... 1
    auc: torch.Tensor  # N
    evaluations: int


def element_scores(attributions: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """N x P relevance per element: per pixel summed over channels for images (maps of one
    channel are used as they are), per feature for rows."""
    if inputs.dim() == 4:
        return attributions.sum(1).reshape(inputs.shape[0], -1)
    return attributions.reshape(inputs.shape[0], -1)


def blurred(inputs: torch.Tensor, sigma: float = 2.0) -> torch.Tensor:
    """A Gaussian blur of N x C x H x W images (separable, reflect padding)."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=inputs.dtype, device=inputs.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = inputs.shape[1]
    pad = min(radius, inputs.shape[-1] - 1, inputs.shape[-2] - 1)
    x = inputs
    if pad < radius:  # tiny images: reflect as far as they allow, then replicate
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        x = F.pad(x, (radius - pad,) * 4, mode="replicate")
    else:
        x = F.pad(x, (radius,) * 4, mode="reflect")
    horizontal = kernel.reshape(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    vertical = kernel.reshape(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    x = F.conv2d(x, horizontal, groups=channels)
    return F.conv2d(x, vertical, groups=channels)


def reference_for(model: Model, inputs: torch.Tensor, reference: Reference) -> torch.Tensor:
    if reference is Reference.BLUR:
        if inputs.dim() != 4:
            raise ValueError("a blurred reference needs images")
        return blurred(inputs)
    return model.baseline().tensor.expand_as(inputs)


def curve(
    model: Model,
    inputs: torch.Tensor,
    scores: torch.Tensor,
    targets: torch.Tensor,
    kind: Curve,
    *,
    steps: int = 16,
    reference: Reference = Reference.BASELINE,
    max_rows: int = 4096,
) -> CurveResult:
    """The deletion or insertion curve of each instance for the ranking given by `scores`
    (N x P, larger first; ties broken by position)."""
    n = inputs.shape[0]
    filler = reference_for(model, inputs, reference)
    count = scores.shape[1]
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(count, device=order.device).expand(n, -1))
    cut = torch.round(torch.arange(steps + 1, device=inputs.device) * count / steps).long()
    points = []
    per_round = max(1, max_rows // max(1, n))
    evaluations = 0
    with torch.no_grad():
        for start in range(0, steps + 1, per_round):
            ks = cut[start : start + per_round]  # s
            moved = rank[:, None, :] < ks[None, :, None]  # N x s x P: the first k elements
            if inputs.dim() == 4:
                moved = moved.reshape(n, len(ks), 1, *inputs.shape[2:])
            else:
                moved = moved.reshape(n, len(ks), *inputs.shape[1:])
            if kind is Curve.DELETION:
                rows = torch.where(moved, filler.unsqueeze(1), inputs.unsqueeze(1))
            else:
                rows = torch.where(moved, inputs.unsqueeze(1), filler.unsqueeze(1))
            flat = rows.reshape(-1, *inputs.shape[1:])
            probabilities = model.probabilities(model.module(flat))
            evaluations += flat.shape[0]
            index = targets.repeat_interleave(len(ks))[:, None]
            points.append(probabilities.gather(1, index).reshape(n, len(ks)))
    curves = torch.cat(points, 1).double()
    fractions = cut.double() / count
    auc = torch.trapezoid(curves, fractions.expand(n, -1), dim=1)
    return CurveResult(curves, auc, evaluations)


def random_curve(
    model: Model,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    kind: Curve,
    *,
    orderings: int = 4,
    seed: int = 0,
    steps: int = 16,
    reference: Reference = Reference.BASELINE,
    max_rows: int = 4096,
) -> CurveResult:
    """The same curve for random rankings, averaged over `orderings`: the score a map with no
    information gets (per instance)."""
    n = inputs.shape[0]
    count = (inputs[0, 0] if inputs.dim() == 4 else inputs[0]).numel()
    rng = torch.Generator(device="cpu").manual_seed(seed)
    results = []
    for _ in range(orderings):
        scores = torch.rand(n, count, generator=rng).to(inputs.device)
        results.append(
            curve(
                model,
                inputs,
                scores,
                targets,
                kind,
                steps=steps,
                reference=reference,
                max_rows=max_rows,
            )
        )
    curves = torch.stack([r.curves for r in results]).mean(0)
    auc = torch.stack([r.auc for r in results]).mean(0)
    return CurveResult(curves, auc, sum(r.evaluations for r in results))
