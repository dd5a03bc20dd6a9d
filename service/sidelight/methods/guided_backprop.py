"""Guided Backpropagation (Springenberg et al. 2015): only positive gradients pass ReLUs."""

from __future__ import annotations

from captum.attr import GuidedBackprop as CaptumGuidedBackprop

from sidelight.methods._passes import single_pass
from sidelight.methods.base import Attribution, Batch, Method, Params
from sidelight.models.model import Capability, Model


class GuidedBackpropParams(Params):
    pass


class GuidedBackprop(Method[GuidedBackpropParams]):
    name = "guided_backprop"
    params_type = GuidedBackpropParams
    needs = frozenset({Capability.GRADIENTS, Capability.MODULE_RULES})
    summary = "Gradient with negative signals cut at every ReLU (sharp, but see sanity checks)."

    def attribute(
        self, model: Model, batch: Batch, params: GuidedBackpropParams, max_rows: int
    ) -> Attribution:
        return single_pass(model, batch, lambda score, x: CaptumGuidedBackprop(score).attribute(x))
