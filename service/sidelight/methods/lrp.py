"""Layer-wise Relevance Propagation, epsilon rule (Bach et al. 2015): the class score is
redistributed layer by layer in proportion to each input's contribution, with a small epsilon
that absorbs weak or contradictory contributions. Relevance is conserved up to what biases and
epsilon absorb; that residue is reported as the completeness error."""

from __future__ import annotations

from collections.abc import Callable

import torch
from captum.attr import LRP as CaptumLRP
from captum.attr._core.lrp import SUPPORTED_LAYERS_WITH_RULES, SUPPORTED_NON_LINEAR_LAYERS
from captum.attr._utils.lrp_rules import EpsilonRule, IdentityRule
from pydantic import Field
from torch import nn

from sidelight.errors import ConfigError
from sidelight.methods._passes import completeness, single_pass
from sidelight.methods.base import Attribution, Batch, Method, Params, TargetScore
from sidelight.models.model import Capability, Model
from sidelight.models.modularize import LayerMarker


class LrpParams(Params):
    epsilon: float = Field(default=1e-9, ge=0.0, le=1e3)


def _leaves(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if not any(True for _ in m.children())]


class _PassThroughRule(IdentityRule):  # type: ignore[misc]
    """Captum's IdentityRule, fixed for a layer right after a nonlinearity (the CAM marker
    follows the last ReLU). Captum's backward hook on a ReLU passes on `grad.replace_out`,
    which the input hooks of the other rules set; IdentityRule's does not, so the ReLU passed
    on the marker's normalised gradient (relevance / activation) instead of the relevance,
    and every layer below was off (digits maps differed from LRP on the eager model by more
    than their own magnitude)."""

    def _create_backward_hook_input(
        self, inputs: torch.Tensor
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        def _backward_hook_input(grad: torch.Tensor) -> torch.Tensor:
            relevance: torch.Tensor = self.relevance_output[grad.device]
            grad.replace_out = relevance  # type: ignore[attr-defined]
            return relevance

        return _backward_hook_input


def _rule_for(layer: nn.Module, epsilon: float) -> EpsilonRule | IdentityRule | None:
    if type(layer) in SUPPORTED_NON_LINEAR_LAYERS:
        return None
    if isinstance(layer, (nn.Identity, LayerMarker)):
        return _PassThroughRule()
    return EpsilonRule(epsilon=epsilon)


class Lrp(Method[LrpParams]):
    name = "lrp"
    params_type = LrpParams
    needs = frozenset({Capability.GRADIENTS, Capability.MODULE_RULES})
    summary = "The class score redistributed backwards, layer by layer (epsilon rule)."

    def check(self, model: Model) -> None:
        known = (
            *SUPPORTED_LAYERS_WITH_RULES,
            *SUPPORTED_NON_LINEAR_LAYERS,
            nn.Identity,
            LayerMarker,
        )
        for name, layer in model.module.named_modules():
            if not any(True for _ in layer.children()) and not isinstance(layer, known):
                raise ConfigError(
                    f"{model.name}/config.yaml",
                    "methods",
                    f"lrp has no rule for layer {name!r} ({type(layer).__name__})",
                )

    def evaluations_per_instance(self, params: LrpParams) -> int:
        return 2

    def attribute(
        self, model: Model, batch: Batch, params: LrpParams, max_rows: int
    ) -> Attribution:
        def lrp(score: TargetScore, x: torch.Tensor) -> torch.Tensor:
            # Captum removes the rules after every call, so they are set before each one.
            for layer in _leaves(model.module):
                rule = _rule_for(layer, params.epsilon)
                if rule is not None:  # nonlinear layers: Captum attaches its pass-through
                    layer.rule = rule
            result: torch.Tensor = CaptumLRP(score).attribute(x)
            return result

        evaluations = self.evaluations_per_instance(params)
        result = single_pass(model, batch, lrp, evaluations=evaluations)
        error, gap = completeness(result.attributions, result.outputs, result.targets, None)
        return Attribution(
            result.attributions, result.outputs, result.targets, evaluations, error, gap
        )
