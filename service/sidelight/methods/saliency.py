"""Saliency (Simonyan et al. 2014): the gradient of the class score w.r.t. the input."""

from __future__ import annotations

from captum.attr import Saliency as CaptumSaliency

from sidelight.methods._passes import single_pass
from sidelight.methods.base import Attribution, Batch, Method, Params
from sidelight.models.model import Model


class SaliencyParams(Params):
    abs: bool = True  # |gradient|, as in the paper; False keeps the sign


class Saliency(Method[SaliencyParams]):
    name = "saliency"
    params_type = SaliencyParams
    summary = "Gradient of the class score with respect to each input value."

    def attribute(
        self, model: Model, batch: Batch, params: SaliencyParams, max_rows: int
    ) -> Attribution:
        return single_pass(
            model, batch, lambda score, x: CaptumSaliency(score).attribute(x, abs=params.abs)
        )
