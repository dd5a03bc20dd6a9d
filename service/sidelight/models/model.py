"""One version of one model, loaded on one device, with everything the methods need of it."""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

import torch
from torch import nn

from sidelight.models.config import ModelConfig, OutputKind


class ModelFormat(StrEnum):
    TORCHSCRIPT = "torchscript"
    TORCH_EXPORT = "torch_export"
    ONNX = "onnx"  # forward passes only (onnxruntime)
    REMOTE = "remote"  # forward passes only, on another server (sidelight.models.remote)


class Capability(StrEnum):
    """What a loaded model offers; each method declares what it needs."""

    GRADIENTS = "gradients"  # input gradients through the forward pass
    MODULE_RULES = "module_rules"  # leaf modules (nn.ReLU, nn.Conv2d, ...) for modified backprop
    LAYER = "layer"  # the CAM layer's output, hookable
    CLASSIFIER = "classifier"  # the linear weights after global average pooling (CAM)


@dataclass(frozen=True)
class Baseline:
    name: str
    tensor: torch.Tensor  # 1 x input shape, on the model's device
    digest: str  # sha256 of the float32 little-endian bytes


@dataclass(frozen=True)
class Background:
    """Rows of the training data, the reference distribution of Shapley values and LIME."""

    tensor: torch.Tensor  # K x input shape, on the model's device
    digest: str  # sha256 of the float32 little-endian bytes
    mean: torch.Tensor  # input shape
    std: torch.Tensor  # input shape, population standard deviation


@dataclass(frozen=True, eq=False)
class Model:
    name: str
    version: str
    config: ModelConfig
    device: torch.device
    format: ModelFormat
    module: nn.Module  # eval mode, parameters frozen: gradients flow to inputs only
    layer: nn.Module | None  # identity marking the CAM layer's output (torch.export models)
    classifier_weight: torch.Tensor | None  # num_classes x channels, for CAM
    baselines: Mapping[str, Baseline]
    num_classes: int
    file_digest: str  # sha256 of the model file (of remote.yaml, for a remote model)
    capabilities: frozenset[Capability]
    background: Background | None = None
    # f(baseline) per baseline name, computed at first use: the same for every request.
    _baseline_outputs: dict[str, torch.Tensor] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.config.input.shape)

    def baseline(self, name: str | None = None) -> Baseline:
        return self.baselines[name or self.config.default_baseline]

    def baseline_outputs(self, name: str | None = None) -> torch.Tensor:
        """The module's outputs at a baseline (1 x classes), computed once: methods that
        report completeness need f(baseline) in every batch, and at one row that forward
        pass is the least efficient call a batch makes. The module's parameters are frozen,
        so the value cannot change; a private copy computes its own."""
        baseline = self.baseline(name)
        found = self._baseline_outputs.get(baseline.name)
        if found is None:
            with torch.no_grad():
                found = self.module(baseline.tensor)
            self._baseline_outputs[baseline.name] = found
        return found

    def private_copy(self) -> Model:
        """This model with a module of its own: same weights, copied. Attribution methods hook
        the module while they run (Captum's layer hooks, modified-backprop rules), and a hook
        fires for every forward or backward through the module, whichever thread runs it: two
        threads may not share one module while either explains. The executor owns the loaded
        module; every other thread that runs the model (the faithfulness sampler, Evaluate,
        embedded job workers) takes a copy. A module that holds no hooks and is safe across
        threads (an onnxruntime session) is shared."""
        if getattr(self.module, "shared_across_threads", False):
            return self
        module = copy.deepcopy(self.module)
        _drop_hooks(module)
        layer = None
        if self.layer is not None:
            path = next(name for name, m in self.module.named_modules() if m is self.layer)
            layer = module.get_submodule(path)
        return replace(self, module=module, layer=layer)

    def probabilities(self, outputs: torch.Tensor) -> torch.Tensor:
        """What clients receive: probabilities for a classifier that returns logits."""
        if self.config.output is OutputKind.LOGITS:
            return torch.softmax(outputs, dim=1)
        return outputs


class PrivateModels:
    """One private copy (see `Model.private_copy`) per model, for one consumer: a thread, or
    calls that never overlap. Two consumers that may run at once need two of these."""

    def __init__(self) -> None:
        self._copies: dict[Model, Model] = {}  # Model hashes by identity (eq=False)
        self._lock = threading.Lock()

    def __call__(self, model: Model) -> Model:
        with self._lock:
            found = self._copies.get(model)
            if found is None:
                found = self._copies[model] = model.private_copy()
            return found


# The per-module hook tables of torch.nn.Module (torch has no public call that empties them).
_HOOK_TABLES = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def _drop_hooks(module: nn.Module) -> None:
    """Empty the hook tables of a freshly copied module: a copy taken while another thread's
    method hooked the original (the faithfulness sampler copies on first use, while the executor
    runs) would otherwise keep calling that method's hook on every forward. A loaded module has
    no hooks of its own (neither TorchScript nor torch.export files carry Python hooks), so
    every hook found here is a method's, in flight."""
    for sub in module.modules():
        for table in _HOOK_TABLES:
            hooks = getattr(sub, table, None)
            if hooks is not None:
                hooks.clear()
