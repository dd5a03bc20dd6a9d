"""The one contract every attribution method answers.

A method is a function over a batch: inputs (N x ...), per-instance targets, typed params ->
attributions and quality figures. The batcher calls it for synchronous requests; later a worker
calls it for jobs, the quality sampler to score it, the audit replay to reproduce it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Generic, TypeVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from sidelight.models.model import Capability, Model


class Mode(StrEnum):
    SYNC = "sync"  # answered inside Explain, in cross-request batches (or as a job)
    ASYNC = "async"  # only as a job: too many model evaluations for a request


class AttributionShape(StrEnum):
    INPUT = "input"  # N x input shape
    LAYER = "layer"  # N x 1 x H x W, upsampled to the input's H x W


class Params(BaseModel):
    """Base of every method's parameters: unknown keys are refused, values are typed."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SeededParams(Params):
    """Parameters of a method that draws noise: the seed makes it reproducible."""

    seed: int | None = None


P = TypeVar("P", bound=Params)


@dataclass(frozen=True)
class Batch:
    inputs: torch.Tensor  # N x input shape, on the model's device
    targets: torch.Tensor  # N int64 on the model's device; -1 = the predicted class
    seeds: torch.Tensor  # N int64 on the CPU: the seed of each instance's request
    # The model's outputs at `inputs` (N x classes), when already computed for a whole batch
    # (see Method.forward_first): methods read them instead of running that pass per chunk.
    outputs: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def slice(self, start: int, stop: int) -> Batch:
        return Batch(
            inputs=self.inputs[start:stop],
            targets=self.targets[start:stop],
            seeds=self.seeds[start:stop],
            outputs=None if self.outputs is None else self.outputs[start:stop],
        )


@dataclass(frozen=True)
class Attribution:
    attributions: torch.Tensor  # N x input shape, or N x 1 x H x W
    outputs: torch.Tensor  # N x classes: the model's raw outputs at the inputs
    targets: torch.Tensor  # N: the class explained
    evaluations_per_instance: int  # rows through the model per instance
    # Methods that promise completeness: sum(attributions) - gap, and the gap itself
    # (f(x) - f(baseline) at the target; f(x) for LRP, whose reference is zero relevance).
    completeness_error: torch.Tensor | None = None  # N
    reference_gap: torch.Tensor | None = None  # N
    # A job's method stopped before its plan ("deadline", "budget", ...): an estimate.
    stopped_by: str = ""
    # Surrogate methods (LIME): the surrogate's weighted R² per instance.
    local_fidelity: torch.Tensor | None = None  # N


class Method(ABC, Generic[P]):
    name: ClassVar[str]
    params_type: ClassVar[type[Params]]
    needs: ClassVar[frozenset[Capability]] = frozenset({Capability.GRADIENTS})
    mode: ClassVar[Mode] = Mode.SYNC
    shape: ClassVar[AttributionShape] = AttributionShape.INPUT
    summary: ClassVar[str] = ""
    # The method runs the model on its inputs apart from its attribution passes (for the
    # targets and the completeness gap): when a batch is cut into chunks, that pass is run once
    # for the whole batch, in calls of up to the chunk's rows, instead of once per chunk, where
    # a chunk of one instance would make it a one-row call (on a CPU, ResNet-18 costs nearly as
    # much per row at one row as four rows cost together).
    forward_first: ClassVar[bool] = False
    # The param that sets `rows_per_instance` (IG's n_steps), named when a request's cost,
    # instances x rows per instance, is over the limit; None: the rows are fixed.
    cost_param: ClassVar[str | None] = None

    @property
    def stochastic(self) -> bool:
        return issubclass(self.params_type, SeededParams)

    def rows_per_instance(self, params: P) -> int:
        """Rows one instance puts through the model in one device call (for chunk sizing)."""
        return 1

    def evaluations_per_instance(self, params: P) -> int:
        """Model evaluations one instance costs, as its Attribution reports them: what a job's
        budget must cover (a method without a partial estimate is refused a smaller one)."""
        return 1

    def check(self, model: Model) -> None:
        """Raise ConfigError if `model` cannot support this method beyond its capabilities."""

    def check_params(self, model: Model, params: P) -> None:
        """Raise InvalidParams if these params cannot run on `model` (checked before queueing)."""

    @abstractmethod
    def attribute(self, model: Model, batch: Batch, params: P, max_rows: int) -> Attribution:
        """Attributions for every instance of `batch`; at most `max_rows` rows per model call."""


class TargetScore(nn.Module):
    """model(x)[i, target_i] per row: the scalar Captum differentiates, one per instance.

    With `resolve=True` the first call, on the real inputs, keeps the outputs and turns -1
    targets into the predicted class, so that single-pass methods need no extra forward pass.
    With `resolve=False` the targets are final (>= 0), e.g. for methods that evaluate the
    model on points other than the inputs. Calls with a multiple of N rows (IG's steps,
    DeepLift's baselines: Captum stacks them block after block) get the targets tiled.
    `sign=-1` explains the opposite of the class (counterfactual Grad-CAM).
    """

    def __init__(
        self, model: nn.Module, targets: torch.Tensor, *, sign: float = 1.0, resolve: bool = True
    ) -> None:
        super().__init__()
        self.model = model
        self.sign = sign
        self.requested = targets
        self.outputs: torch.Tensor | None = None
        self.targets: torch.Tensor | None = None if resolve else targets

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        if self.targets is None:
            self.outputs = out.detach()
            self.targets = torch.where(self.requested < 0, self.outputs.argmax(1), self.requested)
        targets = self.targets
        if targets.shape[0] != out.shape[0]:
            targets = targets.repeat(out.shape[0] // targets.shape[0])
        return self.sign * out.gather(1, targets[:, None]).squeeze(1)

    def resolved(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.outputs is None or self.targets is None:
            raise RuntimeError("TargetScore was never called on the inputs")
        return self.outputs, self.targets


def resolve_targets(model: Model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(outputs at the inputs, targets with -1 replaced by the predicted class): the batch's
    outputs when it carries them, else one forward pass."""
    outputs = batch.outputs
    if outputs is None:
        with torch.no_grad():
            outputs = model.module(batch.inputs)
    return outputs, torch.where(batch.targets < 0, outputs.argmax(1), batch.targets)


def with_grad(inputs: torch.Tensor) -> torch.Tensor:
    """A leaf copy that requires grad (Captum warns when it has to set that itself)."""
    return inputs.detach().clone().requires_grad_(True)


def gather_target(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return outputs.gather(1, targets[:, None]).squeeze(1)


def sum_per_instance(attributions: torch.Tensor) -> torch.Tensor:
    return attributions.reshape(attributions.shape[0], -1).sum(1)


def describe_params(params_type: type[Params]) -> dict[str, Any]:
    return params_type.model_json_schema()
