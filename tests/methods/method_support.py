"""What the attribution-method tests share: the models they explain, eager twins with the same
weights (the oracles run on those), real inputs, and the two ways the service calls a method.

Not a conftest.py: a second `conftest` module would shadow tests/conftest.py for the modules
that import from it (tests/models does). Fixtures stay in tests/conftest.py; the models built
here are cached per repository, so each is exported and loaded once per session.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from captum.attr._utils.lrp_rules import EpsilonRule
from sidelight.demo.architectures import DigitsCnn, TabularMlp
from sidelight.demo.build import export_program
from sidelight.explanations import BatchResult, run_explain
from sidelight.methods.base import Attribution, Batch
from sidelight.methods.catalog import METHODS, check_model, parse_params
from sidelight.models.config import load_config
from sidelight.models.loaders import load_model
from sidelight.models.model import Model
from sidelight.models.registry import ModelRegistry
from sklearn.datasets import load_breast_cancer, load_digits
from torch import nn

CPU = torch.device("cpu")
BIG = 1 << 20  # max_rows that never splits anything


# --- small architectures with what the demo models lack: max pooling and a CAM layer smaller
# than the input, batch norm and spatially varying gradients at the CAM layer, no biases ----


class PooledCnn(nn.Module):
    """1x8x8 -> 3. CAM layer `features` is 6x4x4 (upsampled), then GAP + linear `fc`."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 6, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))  # type: ignore[no-any-return]


class DeepCamCnn(nn.Module):
    """1x8x8 -> 3. CAM layer `body` (4x8x8) is followed by a strided convolution and pooling,
    so the gradient at the layer varies over space (Grad-CAM++ differs from Grad-CAM)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Sequential(
            nn.Conv2d(4, 6, 3, padding=1, stride=2), nn.ReLU(), nn.AvgPool2d(2)
        )
        self.fc = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.head(self.body(x)), 1))  # type: ignore[no-any-return]


class BiasFreeMlp(nn.Module):
    """6 -> 3 without biases: LRP-epsilon conserves relevance up to epsilon."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(6, 5, bias=False),
            nn.ReLU(),
            nn.Linear(5, 4, bias=False),
            nn.ReLU(),
            nn.Linear(4, 3, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


def _randomise(module: nn.Module, seed: int) -> nn.Module:
    """Weights of order one (default inits give outputs ~1e-3 on these tiny nets)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            scale = 0.2 if name.endswith("bias") else 0.8
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
        for sub in module.modules():
            if isinstance(sub, nn.BatchNorm2d):
                assert sub.running_mean is not None and sub.running_var is not None
                sub.running_mean.copy_(torch.rand(sub.num_features, generator=generator) - 0.5)
                sub.running_var.copy_(torch.rand(sub.num_features, generator=generator) + 0.5)
                sub.weight.copy_(torch.rand(sub.num_features, generator=generator) + 0.5)
    return module.eval()


_IMAGE = {"task": "image_classification", "input": {"shape": [1, 8, 8], "range": [0.0, 1.0]}}
_CUSTOM: dict[str, tuple[Callable[[], nn.Module], dict[str, Any]]] = {
    "pooled": (
        PooledCnn,
        {
            **_IMAGE,
            "cam": {"layer": "features", "classifier": "fc"},
            "methods": sorted(METHODS),
        },
    ),
    "deep_cam": (
        DeepCamCnn,
        {
            **_IMAGE,
            "cam": {"layer": "body"},
            "methods": [
                "saliency",
                "guided_backprop",
                "deeplift",
                "lrp",
                "grad_cam",
                "grad_cam_plus_plus",
                "guided_grad_cam",
            ],
        },
    ),
    "bias_free": (
        BiasFreeMlp,
        {
            "task": "tabular_classification",
            "input": {"shape": [6]},
            "methods": ["saliency", "integrated_gradients", "guided_backprop", "deeplift", "lrp"],
        },
    ),
}


@dataclass(frozen=True)
class Twin:
    """A served model and the eager nn.Module it was exported from (same weights)."""

    model: Model
    eager: nn.Module
    layer: nn.Module | None  # the eager module whose output is the CAM layer


def _frozen(module: nn.Module) -> nn.Module:
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def _eager_demo(model: Model, path: Path) -> Twin:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # pytree deprecations inside torch
        state = torch.export.load(str(path)).state_dict
    eager: nn.Module
    if model.name == "digits":
        eager = DigitsCnn()
    else:
        eager = TabularMlp(model.input_shape[0], model.num_classes)
    eager.load_state_dict(state)
    layer = eager.get_submodule(model.config.cam.layer) if model.config.cam else None
    return Twin(model, _frozen(eager), layer)


def _custom(root: Path, name: str, seed: int) -> Twin:
    factory, config = _CUSTOM[name]
    eager = _randomise(factory(), seed)
    folder = root / name
    shape = config["input"]["shape"]
    example = torch.rand((2, *shape), generator=torch.Generator().manual_seed(seed))
    export_program(eager, example, folder / "1" / "model.pt2")
    labels = {"labels": ["a", "b", "c"], "output": "logits"}
    (folder / "config.yaml").write_text(yaml.safe_dump({**config, **labels}))
    model = load_model(folder, "1", load_config(folder / "config.yaml"), CPU)
    check_model(model)
    layer = eager.get_submodule(config["cam"]["layer"]) if "cam" in config else None
    return Twin(model, _frozen(eager), layer)


_ZOOS: dict[Path, dict[str, Twin]] = {}


def zoo(registry: ModelRegistry, repository: Path) -> dict[str, Twin]:
    """digits, breast_cancer (from the session repository) and the small models above."""
    if repository not in _ZOOS:
        twins = {
            name: _eager_demo(registry.get(name).primary, repository / name / "1" / "model.pt2")
            for name in ("digits", "breast_cancer")
        }
        custom_root = repository.parent / f"{repository.name}-method-tests"
        for seed, name in enumerate(_CUSTOM):
            twins[name] = _custom(custom_root, name, seed)
        _ZOOS[repository] = twins
    return _ZOOS[repository]


# --- real inputs -------------------------------------------------------------------------


def digit_images(count: int, start: int = 1500) -> torch.Tensor:
    """Real scikit-learn digits (not the first ones, which the demo model trained on most)."""
    images = load_digits().images[start : start + count] / 16.0
    return torch.from_numpy(images.astype(np.float32)[:, None])


def cancer_rows(count: int, start: int = 400) -> torch.Tensor:
    return torch.from_numpy(load_breast_cancer().data[start : start + count].astype(np.float32))


def real_inputs(model: Model, count: int) -> torch.Tensor:
    if model.name == "breast_cancer":
        return cancer_rows(count)
    if model.input_shape == (1, 8, 8):
        return digit_images(count)
    generator = torch.Generator().manual_seed(count)
    return torch.randn((count, *model.input_shape), generator=generator) * 3


# --- the two ways the service runs a method -----------------------------------------------


def as_batch(
    inputs: torch.Tensor, targets: Any = None, seeds: Any = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = inputs.shape[0]
    t = torch.full((n,), -1) if targets is None else torch.as_tensor(targets)
    s = torch.zeros(n) if seeds is None else torch.as_tensor(seeds)
    return inputs, t.to(torch.int64).reshape(n), s.to(torch.int64).reshape(n)


def attribute(
    model: Model,
    name: str,
    inputs: torch.Tensor,
    targets: Any = None,
    seeds: Any = None,
    max_rows: int = BIG,
    **params: Any,
) -> Attribution:
    """`method.attribute` on one batch, params validated as the service does."""
    method = METHODS[name]
    x, t, s = as_batch(inputs, targets, seeds)
    return method.attribute(model, Batch(x, t, s), parse_params(method, params), max_rows)


def serve(
    model: Model,
    name: str,
    inputs: torch.Tensor,
    targets: Any = None,
    seeds: Any = None,
    max_rows: int = BIG,
    **params: Any,
) -> BatchResult:
    """What an executor runs for an Explain batch: chunking, Quality figures, CPU arrays."""
    method = METHODS[name]
    x, t, s = as_batch(inputs, targets, seeds)
    return run_explain(method, parse_params(method, params), model, x, t, s, max_rows)


# --- oracle helpers --------------------------------------------------------------------------


def target_gradients(
    module: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(d logit_t / d x, logits) by plain autograd, one instance at a time."""
    grads, outputs = [], []
    for x, t in zip(inputs, targets.tolist(), strict=True):
        leaf = x.unsqueeze(0).clone().requires_grad_(True)
        with torch.enable_grad():
            out = module(leaf)
            (grad,) = torch.autograd.grad(out[0, t], leaf)
        grads.append(grad[0])
        outputs.append(out.detach()[0])
    return torch.stack(grads), torch.stack(outputs)


def resolved(module: nn.Module, inputs: torch.Tensor, targets: Any) -> torch.Tensor:
    """Targets with -1 replaced by the predicted class, from an independent forward pass."""
    with torch.no_grad():
        predicted = module(inputs).argmax(1)
    t = torch.as_tensor(targets, dtype=torch.int64)
    return torch.where(t < 0, predicted, t)


@contextmanager
def layer_capture(layer: nn.Module) -> Iterator[list[torch.Tensor]]:
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        yield captured
    finally:
        handle.remove()


def layer_activations_and_gradients(
    twin: Twin, inputs: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, d logit_t / dA) at the eager CAM layer, by a forward hook and plain autograd."""
    assert twin.layer is not None
    with layer_capture(twin.layer) as captured, torch.enable_grad():
        out = twin.eager(inputs.clone().requires_grad_(True))
        selected = out.gather(1, targets[:, None]).sum()
        (grads,) = torch.autograd.grad(selected, captured[0])
    return captured[0].detach(), grads


def upsample_like(maps: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Bilinear (align_corners=False) to the input's H x W, as Captum's LayerAttribution does."""
    if maps.shape[-2:] == inputs.shape[-2:]:
        return maps
    return F.interpolate(maps, size=inputs.shape[-2:], mode="bilinear", align_corners=False)


LRP_LAYERS = (
    nn.Linear,
    nn.Conv2d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.BatchNorm2d,
)


def set_lrp_rules(module: nn.Module, epsilon: float) -> None:
    """Captum's epsilon rule on every layer with weights or pooling (Captum drops them after
    each call, so set them before each)."""
    for layer in module.modules():
        if isinstance(layer, LRP_LAYERS):
            layer.rule = EpsilonRule(epsilon=epsilon)


def assert_close(actual: Any, expected: Any, rtol: float, atol: float = 0.0) -> None:
    """max|actual - expected| <= rtol * max|expected| + atol (+ a float32 floor)."""
    assert actual is not None
    a = torch.as_tensor(np.asarray(actual), dtype=torch.float64)
    e = torch.as_tensor(np.asarray(expected), dtype=torch.float64)
    assert a.shape == e.shape, (a.shape, e.shape)
    scale = float(e.abs().max()) if e.numel() else 0.0
    error = float((a - e).abs().max()) if e.numel() else 0.0
    assert error <= rtol * scale + atol + 1e-7, f"max error {error:.3g} vs scale {scale:.3g}"


def fast_params(name: str) -> Mapping[str, Any]:
    """Cheap but representative params per method for the conformance suite."""
    return {
        "integrated_gradients": {"n_steps": 8},
        "smoothgrad": {"samples": 3},
        "vargrad": {"samples": 3},
        "kernel_shap": {"n_samples": 16},
        "exact_shapley": {"grid_cells": 2},
        "lime": {"n_samples": 24},
        "rise": {"n_masks": 16},
    }.get(name, {})
