"""What the perturbation methods (kernel_shap, exact_shapley, lime, occlusion, rise) share.

They need only forward passes, many of them: hundreds to thousands per instance. So they run
as jobs, and everything here is about spending those evaluations well:

- `Evaluator` puts perturbed inputs through the model on its device in calls of at most
  `max_rows` rows, several instances per call, counts every row, reports progress, and stops
  between calls when the job's `Control` says so (cancelled, past its deadline, out of
  budget). A method then returns what it has, marked partial.
- `Features` is the interpretable representation: which input elements move together. For a
  tabular model each feature is its own; for an image, a grid cell or a superpixel, across
  channels.
- `compose` builds "x where the coalition keeps a feature, the reference elsewhere" for many
  coalitions, instances and references at once, as one broadcast (no Python loop per sample).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import torch

from sidelight.errors import InvalidParams
from sidelight.methods.base import Attribution, Batch, Method, Mode, Params
from sidelight.methods.chunking import concatenate
from sidelight.models.model import Model


class Control(Protocol):
    """A job's say over its own computation, consulted between model calls."""

    def stop_reason(self, evaluations: int, next_rows: int) -> str | None:
        """Why the job must not spend `next_rows` more rows after `evaluations`: "cancelled",
        "deadline", "budget", "lost"; None to go on."""
        ...

    def progress(self, fraction: float, evaluations: int) -> None: ...


class Unlimited:
    """No deadline, no budget, nobody watching: a method called outside a job."""

    def stop_reason(self, evaluations: int, next_rows: int) -> str | None:
        return None

    def progress(self, fraction: float, evaluations: int) -> None:
        pass


@dataclass
class Evaluator:
    """Counted, chunked, stoppable forward passes of one model (probabilities, no grad)."""

    model: Model
    max_rows: int
    control: Control = field(default_factory=Unlimited)
    planned: int = 1  # rows the method means to spend, for the progress fraction
    evaluations: int = 0
    stopped_by: str = ""

    def afford(self, rows: int) -> bool:
        """Whether `rows` more rows may run; if not, remember why (the result is partial)."""
        if self.stopped_by:
            return False
        reason = self.control.stop_reason(self.evaluations, rows)
        if reason is not None:
            self.stopped_by = reason
            return False
        return True

    def outputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """The model's raw outputs at R inputs, in calls of at most `max_rows` rows. Counts
        the rows and reports progress; does not ask `afford` (the caller did)."""
        parts = []
        with torch.no_grad():
            for part in torch.split(inputs, self.max_rows):
                parts.append(self.model.module(part))
                self.evaluations += part.shape[0]
        self.control.progress(min(1.0, self.evaluations / max(1, self.planned)), self.evaluations)
        return torch.cat(parts)

    def probabilities(self, inputs: torch.Tensor) -> torch.Tensor:
        """What the perturbation methods explain: the model's probabilities (its outputs, for
        a model that returns probabilities)."""
        return self.model.probabilities(self.outputs(inputs))


@dataclass(frozen=True)
class Features:
    """Which input elements form each interpretable feature.

    `index`: N x (input shape) int64, the feature of each element of each instance (per
    instance, since superpixels differ between images); `count`: features per instance, the
    most of any instance; `counts`: N, each instance's own (superpixels), or None when all
    have `count`.
    """

    index: torch.Tensor
    count: int
    counts: torch.Tensor | None = None

    def valid(self) -> torch.Tensor:
        """N x count bool: which features each instance really has."""
        n = self.index.shape[0]
        columns = torch.arange(self.count, device=self.index.device)
        if self.counts is None:
            return torch.ones(n, self.count, dtype=torch.bool, device=self.index.device)
        return columns[None, :] < self.counts[:, None].to(self.index.device)

    def masks(self, coalitions: torch.Tensor) -> torch.Tensor:
        """N x S x (input shape) bool: whether each element is kept, for S x count coalitions."""
        n = self.index.shape[0]
        flat = self.index.reshape(n, -1)  # N x D
        kept = coalitions[:, flat]  # S x N x D
        return kept.transpose(0, 1).reshape(n, coalitions.shape[0], *self.index.shape[1:])

    def paint(self, values: torch.Tensor) -> torch.Tensor:
        """N x count values -> N x (input shape), each element holding its feature's value
        divided by the feature's number of elements, so that the map sums to the values."""
        n = self.index.shape[0]
        flat = self.index.reshape(n, -1)
        sizes = torch.zeros(n, self.count, dtype=values.dtype, device=values.device)
        sizes.scatter_add_(1, flat, torch.ones_like(flat, dtype=values.dtype))
        density = values / sizes.clamp_min(1)
        return density.gather(1, flat).reshape(self.index.shape)


def tabular_features(inputs: torch.Tensor) -> Features:
    """One feature per column: N x F -> index N x F."""
    n, width = inputs.shape
    index = torch.arange(width, device=inputs.device).expand(n, width).contiguous()
    return Features(index, width)


def grid_features(inputs: torch.Tensor, cells: int) -> Features:
    """Images N x C x H x W cut into cells x cells rectangles (all channels together)."""
    n, channels, height, width = inputs.shape
    rows = torch.div(
        torch.arange(height, device=inputs.device) * cells, height, rounding_mode="floor"
    )
    cols = torch.div(
        torch.arange(width, device=inputs.device) * cells, width, rounding_mode="floor"
    )
    cell = rows[:, None] * cells + cols[None, :]  # H x W
    index = cell.expand(n, channels, height, width).contiguous()
    return Features(index, cells * cells)


def superpixel_features(inputs: torch.Tensor, method: str, n_segments: int) -> Features:
    """Images cut into superpixels by scikit-image (on the host, image by image)."""
    from sidelight_handlers.image import superpixels

    labels = torch.from_numpy(superpixels(inputs.detach().cpu().numpy(), method, n_segments))
    counts = labels.reshape(labels.shape[0], -1).amax(1) + 1
    index = labels.unsqueeze(1).expand(-1, inputs.shape[1], -1, -1).contiguous()
    return Features(index.to(inputs.device), int(counts.max()), counts.to(inputs.device))


def compose(inputs: torch.Tensor, references: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Where masks keep an element, the input's; elsewhere each reference's.

    inputs N x (shape), references K x (shape), masks N x S x (shape) -> N*S*K x (shape),
    ordered instance, then coalition, then reference."""
    n, samples = masks.shape[:2]
    k = references.shape[0]
    shape = inputs.shape[1:]
    kept = masks.unsqueeze(2)  # N x S x 1 x shape
    x = inputs.reshape(n, 1, 1, *shape)
    ref = references.reshape(1, 1, k, *shape)
    return torch.where(kept, x, ref).reshape(n * samples * k, *shape)


def target_scores(
    probabilities: torch.Tensor, targets: torch.Tensor, per_instance: int
) -> torch.Tensor:
    """N*R x classes rows (R per instance, instance-major) -> N x R scores of each target."""
    n = targets.shape[0]
    rows = probabilities.reshape(n, per_instance, -1)
    index = targets.reshape(n, 1, 1).expand(n, per_instance, 1)
    return rows.gather(2, index).squeeze(2)


def generator(batch: Batch) -> torch.Generator:
    """The random stream of a batch whose instances share one seed (see PerturbationMethod),
    on the CPU: the same seed draws the same samples on any device."""
    rng = torch.Generator(device="cpu")
    rng.manual_seed(int(batch.seeds[0]) if len(batch.seeds) else 0)
    return rng


def require_baseline(model: Model, name: str | None) -> None:
    """InvalidParams("params.baseline") unless `name` is None or one of the model's."""
    if name is not None and name not in model.baselines:
        raise InvalidParams(
            "params.baseline",
            f"model {model.name!r} has no baseline {name!r}; it has {sorted(model.baselines)}",
        )


def feature_draws(batch: Batch, samples: int, count: int) -> torch.Tensor:
    """samples x count uniform draws, column j from its own stream (seed, j): a feature's draws
    do not depend on how many features the batch's other images have (superpixel counts
    differ), so an image gets the same samples alone or in a batch."""
    seed = int(batch.seeds[0]) if len(batch.seeds) else 0
    columns = []
    for feature in range(count):  # one stream per feature, not per instance or sample
        rng = torch.Generator(device="cpu")
        rng.manual_seed((seed * 1_000_003 + feature) % (1 << 63))
        columns.append(torch.rand(samples, generator=rng))
    return torch.stack(columns, 1)


P = TypeVar("P", bound=Params)


class PerturbationMethod(Method[P]):
    """A method that only evaluates the model (no gradients), run as a job.

    Instances that share a seed share their samples (coalitions, masks), so that one model
    call serves all of them; a job is one request, hence one seed and one group. A batch that
    mixes seeds runs group by group, each as if it came alone."""

    needs = frozenset()
    mode = Mode.ASYNC

    def attribute(self, model: Model, batch: Batch, params: P, max_rows: int) -> Attribution:
        return self.run(model, batch, params, Evaluator(model, max_rows))

    def run(self, model: Model, batch: Batch, params: P, evaluator: Evaluator) -> Attribution:
        """Attributions for every instance of `batch`, spending evaluations through
        `evaluator`; when it stops early, the best estimate from what was spent."""
        seeds = batch.seeds
        if len(seeds) == 0 or bool((seeds == seeds[0]).all()):
            return self.run_group(model, batch, params, evaluator)
        order = torch.argsort(seeds, stable=True)
        parts, indices = [], []
        for seed in torch.unique(seeds).tolist():
            index = order[seeds[order] == seed]
            part = Batch(batch.inputs[index], batch.targets[index], seeds[index])
            parts.append(self.run_group(model, part, params, evaluator))
            indices.append(index)
        joined = concatenate(parts)
        back = torch.argsort(torch.cat(indices))
        return _reorder(joined, back.to(joined.attributions.device))

    @abstractmethod
    def run_group(self, model: Model, batch: Batch, params: P, evaluator: Evaluator) -> Attribution:
        """`run` for instances that share one seed."""


def _reorder(result: Attribution, order: torch.Tensor) -> Attribution:
    def pick(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else tensor[order.to(tensor.device)]

    return Attribution(
        attributions=result.attributions[order],
        outputs=result.outputs[order.to(result.outputs.device)],
        targets=result.targets[order.to(result.targets.device)],
        evaluations_per_instance=result.evaluations_per_instance,
        completeness_error=pick(result.completeness_error),
        reference_gap=pick(result.reference_gap),
        stopped_by=result.stopped_by,
        local_fidelity=pick(result.local_fidelity),
    )
