"""One version of one model, loaded on one device, with everything the methods need of it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import torch
from torch import nn

from sidelight.models.config import ModelConfig, OutputKind


class ModelFormat(StrEnum):
    TORCHSCRIPT = "torchscript"
    TORCH_EXPORT = "torch_export"
    ONNX = "onnx"  # forward passes only (onnxruntime)


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
    file_digest: str  # sha256 of the model file
    capabilities: frozenset[Capability]
    background: Background | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.config.input.shape)

    def baseline(self, name: str | None = None) -> Baseline:
        return self.baselines[name or self.config.default_baseline]

    def probabilities(self, outputs: torch.Tensor) -> torch.Tensor:
        """What clients receive: probabilities for a classifier that returns logits."""
        if self.config.output is OutputKind.LOGITS:
            return torch.softmax(outputs, dim=1)
        return outputs
