"""Infidelity and max-sensitivity (Yeh et al. 2019), by Captum's implementations.

- Infidelity: E_I[(I . attr - (f(x) - f(x - I)))^2] over perturbations I ~ N(0, sigma^2), with
  f the probability of the explained class; lower is more faithful. Captum's `infidelity`
  batches the perturbations of all instances (`max_examples_per_batch`).
- Max-sensitivity: the largest relative change of the explanation, ||e(x') - e(x)|| / ||e(x)||,
  over x' uniform in an L-inf ball of `radius` around x; lower is more stable. Captum's
  `sensitivity_max` calls the method on all perturbed copies of a batch at once.

Both run the model (and for sensitivity the method) on the model's device; noise is drawn from
torch's generator under a fixed seed, so a score is reproducible on one machine.
"""

from __future__ import annotations

from typing import Any

import torch
from captum.metrics import infidelity as captum_infidelity
from captum.metrics import sensitivity_max as captum_sensitivity_max

from sidelight.methods.base import Batch, Params
from sidelight.methods.catalog import AnyMethod
from sidelight.models.model import Model


def _noise_scale(model: Model, inputs: torch.Tensor) -> torch.Tensor | float:
    """A tenth of each feature's spread in the background data (tabular features differ by
    orders of magnitude), else a tenth of the input's declared range, else of the batch's."""
    if model.background is not None and inputs.dim() == 2:
        std = model.background.std.to(inputs.device, inputs.dtype)
        return 0.1 * torch.where(std > 0, std, torch.ones_like(std))
    span = model.config.input.range
    if span is not None and span[1] - span[0] < 1e6:
        return 0.1 * float(span[1] - span[0])
    return 0.1 * float(inputs.std()) if inputs.numel() > 1 else 0.1


def _noise_scale_scalar(model: Model, inputs: torch.Tensor) -> float:
    scale = _noise_scale(model, inputs)
    return float(scale.mean()) if isinstance(scale, torch.Tensor) else scale


def infidelity(
    model: Model,
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    targets: torch.Tensor,
    *,
    samples: int = 16,
    sigma: float | None = None,
    seed: int = 0,
    max_rows: int = 4096,
    normalize: bool = True,
) -> torch.Tensor:
    """N infidelity scores of input-shaped attributions (maps of one channel are broadcast
    over the channels, as a pixel's relevance). `normalize` rescales each map by the factor
    that minimises its infidelity (Yeh et al.'s comparison across methods, whose maps come in
    different units); without it the score depends on the map's scale."""
    scale = _noise_scale(model, inputs) if sigma is None else sigma
    rng = torch.Generator(device="cpu").manual_seed(seed)
    if attributions.shape != inputs.shape:
        attributions = attributions.expand_as(inputs)

    def perturb(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(x, tuple):
            x = x[0]
        noise = torch.randn(x.shape, generator=rng).to(x.device, x.dtype) * scale
        return noise, x - noise

    def probability(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            scores = model.probabilities(model.module(x))
        return scores.gather(1, target[:, None]).squeeze(1)

    n = inputs.shape[0]
    per_call = max(1, max_rows // max(1, samples))  # instances per Captum call
    parts = []
    for start in range(0, n, per_call):
        stop = min(n, start + per_call)
        parts.append(
            captum_infidelity(
                lambda x, t: probability(x, t),
                perturb,
                inputs[start:stop],
                attributions[start:stop],
                additional_forward_args=(targets[start:stop],),
                n_perturb_samples=samples,
                # Captum's rule: at least the batch, at most batch x samples rows per call.
                max_examples_per_batch=(stop - start) * samples,
                normalize=normalize,
            )
        )
    return torch.cat(parts).double()


def max_sensitivity(
    model: Model,
    method: AnyMethod,
    params: Params,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    samples: int = 8,
    radius: float | None = None,
    seed: int = 0,
    max_rows: int = 4096,
) -> torch.Tensor:
    """N max-sensitivity scores of `method` with `params`, at fixed targets."""
    scale = float(_noise_scale_scalar(model, inputs)) * 0.2 if radius is None else radius
    rng = torch.Generator(device="cpu").manual_seed(seed)

    def perturb(x: torch.Tensor, r: float) -> torch.Tensor:
        noise = (torch.rand(x.shape, generator=rng) * 2 - 1) * r
        return x + noise.to(x.device, x.dtype)

    def explain(
        x: torch.Tensor | tuple[torch.Tensor, ...], target: torch.Tensor
    ) -> tuple[torch.Tensor]:
        if isinstance(x, tuple):  # Captum passes the unperturbed inputs as a tuple
            x = x[0]
        seeds = torch.full((x.shape[0],), seed, dtype=torch.int64)
        found = method.attribute(model, Batch(x, target, seeds), params, max_rows)
        return (found.attributions,)  # a tuple, as Captum iterates over the inputs' parts

    n = inputs.shape[0]
    per_call = max(1, max_rows // max(1, samples))
    parts = []
    for start in range(0, n, per_call):
        stop = min(n, start + per_call)
        kwargs: dict[str, Any] = {"target": targets[start:stop]}
        found: torch.Tensor = captum_sensitivity_max(
            explain,
            inputs[start:stop],
            perturb_func=perturb,
            perturb_radius=scale,
            n_perturb_samples=samples,
            max_examples_per_batch=(stop - start) * samples,
            **kwargs,
        )
        parts.append(found)
    return torch.cat(parts).double()
