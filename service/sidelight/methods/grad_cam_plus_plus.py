"""Grad-CAM++ (Chattopadhyay et al. 2018): pixel-wise weights for the gradients, so that several
instances of a class in one image all show. Captum has no Grad-CAM++; pytorch-grad-cam has one but
needs torchvision and OpenCV. The weights follow the paper's closed form (eq. 19), with the
exponential of the score, under which the higher derivatives reduce to powers of the gradient:

    alpha_kij = g^2 / (2 g^2 + sum_ab A_kab g^3),   w_k = sum_ij alpha_kij relu(g_kij)
    map = relu(sum_k w_k A_k)
"""

from __future__ import annotations

import torch

from sidelight.methods._passes import layer_activations_and_gradients, upsample
from sidelight.methods.base import Attribution, AttributionShape, Batch, Method, Params
from sidelight.models.model import Capability, Model


class GradCamPlusPlusParams(Params):
    pass


def grad_cam_plus_plus_map(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """N x K x h x w activations and gradients -> N x 1 x h x w map."""
    g2 = gradients.pow(2)
    g3 = gradients.pow(3)
    denominator = 2 * g2 + activations.sum(dim=(2, 3), keepdim=True) * g3
    alpha = torch.where(denominator != 0, g2 / denominator, torch.zeros_like(g2))
    weights = (alpha * gradients.clamp_min(0)).sum(dim=(2, 3), keepdim=True)  # N x K x 1 x 1
    return (weights * activations).sum(1, keepdim=True).clamp_min(0)


class GradCamPlusPlus(Method[GradCamPlusPlusParams]):
    name = "grad_cam_plus_plus"
    params_type = GradCamPlusPlusParams
    needs = frozenset({Capability.GRADIENTS, Capability.LAYER})
    shape = AttributionShape.LAYER
    summary = "Grad-CAM with pixel-wise gradient weights (several objects of a class show)."

    def attribute(
        self, model: Model, batch: Batch, params: GradCamPlusPlusParams, max_rows: int
    ) -> Attribution:
        activations, gradients, outputs, targets = layer_activations_and_gradients(model, batch)
        maps = grad_cam_plus_plus_map(activations, gradients)
        return Attribution(upsample(maps, batch.inputs.shape), outputs, targets, 1)
