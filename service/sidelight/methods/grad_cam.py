"""Grad-CAM (Selvaraju et al. 2017): the CAM layer's feature maps weighted by the spatial mean
of the class score's gradient, rectified. `counterfactual` explains the opposite: the regions
whose presence lowers the score (the paper's negative-gradient variant)."""

from __future__ import annotations

from captum.attr import LayerGradCam

from sidelight.methods._passes import single_pass, upsample
from sidelight.methods.base import Attribution, AttributionShape, Batch, Method, Params
from sidelight.models.model import Capability, Model


class GradCamParams(Params):
    counterfactual: bool = False
    relu: bool = True  # rectify the map, as in the paper


class GradCam(Method[GradCamParams]):
    name = "grad_cam"
    params_type = GradCamParams
    needs = frozenset({Capability.GRADIENTS, Capability.LAYER})
    shape = AttributionShape.LAYER
    summary = "Feature maps weighted by the mean gradient of the class score (or its opposite)."

    def attribute(
        self, model: Model, batch: Batch, params: GradCamParams, max_rows: int
    ) -> Attribution:
        layer = model.layer
        result = single_pass(
            model,
            batch,
            lambda score, x: LayerGradCam(score, layer).attribute(x, relu_attributions=params.relu),
            sign=-1.0 if params.counterfactual else 1.0,
        )
        return Attribution(
            upsample(result.attributions, batch.inputs.shape),
            result.outputs,
            result.targets,
            1,
        )
