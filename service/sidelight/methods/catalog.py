"""The methods Sidelight serves, in one place: name -> method, with its mode and needs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from sidelight.errors import (
    ECHO_CHARS,
    ConfigError,
    FailedPrecondition,
    InvalidParams,
    MethodNotFound,
    shown,
)
from sidelight.methods.base import Method, Params
from sidelight.methods.cam import Cam
from sidelight.methods.deeplift import DeepLift
from sidelight.methods.grad_cam import GradCam
from sidelight.methods.grad_cam_plus_plus import GradCamPlusPlus
from sidelight.methods.guided_backprop import GuidedBackprop
from sidelight.methods.guided_grad_cam import GuidedGradCam
from sidelight.methods.input_x_gradient import InputXGradient
from sidelight.methods.integrated_gradients import IntegratedGradients
from sidelight.methods.lime import Lime
from sidelight.methods.lrp import Lrp
from sidelight.methods.noise_tunnel import SmoothGrad, VarGrad
from sidelight.methods.occlusion import Occlusion
from sidelight.methods.rise import Rise
from sidelight.methods.saliency import Saliency
from sidelight.methods.shapley import ExactShapley, KernelShap
from sidelight.models.model import Model, ModelFormat

AnyMethod = Method[Any]


def _catalog() -> dict[str, AnyMethod]:
    gradient_methods: dict[str, AnyMethod] = {
        m.name: m for m in (Saliency(), InputXGradient(), IntegratedGradients(), GuidedBackprop())
    }
    methods: list[AnyMethod] = [
        *gradient_methods.values(),
        SmoothGrad(gradient_methods),
        VarGrad(gradient_methods),
        DeepLift(),
        Lrp(),
        Cam(),
        GradCam(),
        GradCamPlusPlus(),
        GuidedGradCam(),
        KernelShap(),
        ExactShapley(),
        Lime(),
        Occlusion(),
        Rise(),
    ]
    return {m.name: m for m in methods}


METHODS: Mapping[str, AnyMethod] = _catalog()


def method_for(model: Model, name: str, *, field: str = "method") -> AnyMethod:
    """The method `name` if this model offers it; MethodNotFound (naming `field`) otherwise,
    or FailedPrecondition for a method that a remote model can never run, whatever its config
    lists: the request is sound, the model's configuration is what must change."""
    method = METHODS.get(name)
    if method is not None and model.format is ModelFormat.REMOTE and method.needs:
        raise FailedPrecondition(field, _remote_refusal(model, method))
    if name not in model.config.methods:
        known = "" if name in METHODS else " (no such method)"
        raise MethodNotFound(
            field,
            f"{shown(name)}{known} is not offered by model {model.name!r}; "
            f"it offers {model.config.methods}",
        )
    return METHODS[name]


def parse_params(method: AnyMethod, raw: Mapping[str, Any]) -> Params:
    """Typed, validated params; InvalidParams names the first offending key."""
    try:
        return method.params_type.model_validate(dict(raw))
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part)[:ECHO_CHARS] for part in first["loc"])
        field = f"params.{key}" if key else "params"
        raise InvalidParams(field, f"{first['msg']} (method {method.name})") from exc


def _remote_refusal(model: Model, method: AnyMethod) -> str:
    needs = ", ".join(sorted(c.value for c in method.needs))
    return (
        f"{method.name} needs {needs} of the model, and model {model.name!r} version "
        f"{model.version} is remote ({model.version}/remote.yaml): its endpoint answers forward "
        "passes only. Explain it with a perturbation method (kernel_shap, exact_shapley, lime, "
        "occlusion, rise), or add a model entry that loads the artifact the endpoint serves "
        "locally: model.pt2 (torch.export), model.pt (TorchScript) or the TorchServe .mar"
    )


def _remedy(model: Model) -> str:
    if model.format is ModelFormat.ONNX:
        return (
            " (ONNX models run forward passes only: offer the perturbation methods, or "
            "export the model with torch.export as model.pt2)"
        )
    if model.format is ModelFormat.REMOTE:
        return (
            " (remote models run forward passes only: offer the perturbation methods, and "
            "explain the local artifact, model.pt2, model.pt or the .mar, for gradients)"
        )
    if model.format is ModelFormat.TORCHSCRIPT:
        return " (export it with torch.export as model.pt2 and set cam.layer)"
    return " (set cam.layer, and cam.classifier for cam)"


def check_model(model: Model) -> None:
    """Refuse at start a model whose config allows a method it cannot support."""
    where = f"{model.name}/config.yaml"
    for name in model.config.methods:
        method = METHODS.get(name)
        if method is None:
            raise ConfigError(
                where, "methods", f"unknown method {name!r}; known: {sorted(METHODS)}"
            )
        missing = method.needs - model.capabilities
        if missing:
            raise ConfigError(
                where,
                "methods",
                f"{name} needs {sorted(c.value for c in missing)}, which this "
                f"{model.format.value} model does not offer" + _remedy(model),
            )
        method.check(model)
