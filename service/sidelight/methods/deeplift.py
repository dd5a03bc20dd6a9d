"""DeepLIFT, rescale rule (Shrikumar et al. 2017): differences from a baseline, propagated
through each nonlinearity by the ratio of output to input differences. Completeness holds
exactly in exact arithmetic: sum(attributions) = f(x) - f(baseline)."""

from __future__ import annotations

import torch
from captum.attr import DeepLift as CaptumDeepLift

from sidelight.methods._passes import completeness
from sidelight.methods.base import (
    Attribution,
    Batch,
    Method,
    Params,
    TargetScore,
    resolve_targets,
    with_grad,
)
from sidelight.models.model import Capability, Model


class DeepLiftParams(Params):
    baseline: str | None = None  # a baseline named in the model's config


class DeepLift(Method[DeepLiftParams]):
    name = "deeplift"
    params_type = DeepLiftParams
    needs = frozenset({Capability.GRADIENTS, Capability.MODULE_RULES})
    summary = "Contributions relative to a baseline, by the rescale rule at each nonlinearity."
    forward_first = True

    def rows_per_instance(self, params: DeepLiftParams) -> int:
        return 2  # Captum runs inputs and baselines in one call

    def evaluations_per_instance(self, params: DeepLiftParams) -> int:
        return 3

    def attribute(
        self, model: Model, batch: Batch, params: DeepLiftParams, max_rows: int
    ) -> Attribution:
        baseline = model.baseline(params.baseline).tensor
        outputs, targets = resolve_targets(model, batch)
        reference = model.baseline_outputs(params.baseline)
        score = TargetScore(model.module, targets, resolve=False)
        with torch.enable_grad():
            attributions = (
                CaptumDeepLift(score)
                .attribute(with_grad(batch.inputs), baselines=baseline.expand_as(batch.inputs))
                .detach()
            )
        error, gap = completeness(attributions, outputs, targets, reference)
        evaluations = self.evaluations_per_instance(params)
        return Attribution(attributions, outputs, targets, evaluations, error, gap)
