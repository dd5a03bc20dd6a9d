"""Guided Grad-CAM (Selvaraju et al. 2017): Guided Backpropagation times the upsampled Grad-CAM
map, for explanations that are both class-discriminative and fine-grained."""

from __future__ import annotations

from captum.attr import GuidedGradCam as CaptumGuidedGradCam

from sidelight.methods._passes import single_pass
from sidelight.methods.base import Attribution, Batch, Method, Params
from sidelight.models.model import Capability, Model


class GuidedGradCamParams(Params):
    pass


class GuidedGradCam(Method[GuidedGradCamParams]):
    name = "guided_grad_cam"
    params_type = GuidedGradCamParams
    needs = frozenset({Capability.GRADIENTS, Capability.MODULE_RULES, Capability.LAYER})
    summary = "Guided Backpropagation masked by the upsampled Grad-CAM map."

    def evaluations_per_instance(self, params: GuidedGradCamParams) -> int:
        return 2

    def attribute(
        self, model: Model, batch: Batch, params: GuidedGradCamParams, max_rows: int
    ) -> Attribution:
        layer = model.layer
        return single_pass(
            model,
            batch,
            lambda score, x: CaptumGuidedGradCam(score, layer).attribute(
                x, interpolate_mode="bilinear"
            ),
            evaluations=self.evaluations_per_instance(params),
        )
