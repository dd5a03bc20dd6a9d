"""Input x Gradient (Shrikumar et al. 2016): each input value times its gradient."""

from __future__ import annotations

from captum.attr import InputXGradient as CaptumInputXGradient

from sidelight.methods._passes import single_pass
from sidelight.methods.base import Attribution, Batch, Method, Params
from sidelight.models.model import Model


class InputXGradientParams(Params):
    pass


class InputXGradient(Method[InputXGradientParams]):
    name = "input_x_gradient"
    params_type = InputXGradientParams
    summary = "Input value times the gradient of the class score."

    def attribute(
        self, model: Model, batch: Batch, params: InputXGradientParams, max_rows: int
    ) -> Attribution:
        return single_pass(model, batch, lambda score, x: CaptumInputXGradient(score).attribute(x))
