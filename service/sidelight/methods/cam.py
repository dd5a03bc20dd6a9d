"""CAM (Zhou et al. 2016): for a network ending in global average pooling and a linear layer,
the class map is the feature maps weighted by that class's linear weights: sum_k W[c, k] A_k.
Captum has no CAM; it needs no gradient, one forward pass."""

from __future__ import annotations

import torch

from sidelight.methods._passes import upsample
from sidelight.methods.base import (
    Attribution,
    AttributionShape,
    Batch,
    Method,
    Params,
    TargetScore,
)
from sidelight.models.model import Capability, Model


class CamParams(Params):
    pass


class Cam(Method[CamParams]):
    name = "cam"
    params_type = CamParams
    needs = frozenset({Capability.LAYER, Capability.CLASSIFIER})
    shape = AttributionShape.LAYER
    summary = "Feature maps of the last convolution weighted by the class's linear weights."

    def attribute(
        self, model: Model, batch: Batch, params: CamParams, max_rows: int
    ) -> Attribution:
        assert model.layer is not None and model.classifier_weight is not None
        captured: list[torch.Tensor] = []
        handle = model.layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
        score = TargetScore(model.module, batch.targets)
        try:
            with torch.no_grad():
                score(batch.inputs)
        finally:
            handle.remove()
        outputs, targets = score.resolved()
        activations = captured[0]  # N x K x h x w
        weights = model.classifier_weight[targets]  # N x K
        maps = torch.einsum("nk,nkhw->nhw", weights, activations).unsqueeze(1)
        return Attribution(upsample(maps, batch.inputs.shape), outputs, targets, 1)
