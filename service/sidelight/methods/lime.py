"""LIME (Ribeiro et al. 2016): a weighted ridge regression fitted to the model around one
instance; its coefficients are the attributions and its weighted R² the local fidelity.

- Tabular: samples drawn around the instance with the spread of the training data (the
  model's background rows), x + std * N(0, 1), the surrogate fitted on standardised
  differences, weighted by exp(-d²/w²) with w = 0.75 sqrt(M) (the `lime` package's defaults).
  A coefficient is the change of the explained probability per training standard deviation
  of the feature.
- Images: features are superpixels (scikit-image: slic, felzenszwalb, quickshift) or a grid;
  a sample keeps a random half of them and hides the rest (with the superpixel's own mean
  colour, as `lime` does, or the model's baseline); weights from the cosine distance to the
  full image, w = 0.25.

Written here rather than wrapped from the `lime` package or Captum: both explain one instance
per call with the model evaluated on the host in numpy; here the samples of a job are shared
by its instances and evaluated in large batches on the model's device, and the surrogates of
all instances are solved in one batched linear solve.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field

from sidelight.errors import ConfigError
from sidelight.methods.base import Attribution, Batch, SeededParams
from sidelight.methods.perturbation import (
    Evaluator,
    Features,
    PerturbationMethod,
    feature_draws,
    generator,
    grid_features,
    require_baseline,
    superpixel_features,
    tabular_features,
    target_scores,
)
from sidelight.models.config import Task
from sidelight.models.model import Model

# Builds the perturbed inputs of samples [start, stop) for every instance: N*(stop-start) rows.
_Builder = Callable[[int, int], torch.Tensor]


class LimeParams(SeededParams):
    n_samples: int = Field(default=1000, ge=2, le=1 << 16)
    # Ridge penalty of the surrogate (the `lime` package's default).
    alpha: float = Field(default=1.0, ge=0.0, le=1e6)
    # None: 0.75 sqrt(features) for tabular rows, 0.25 for images (cosine distance).
    kernel_width: float | None = Field(default=None, gt=0.0, le=1e6)
    # Images: how features are made, and how a hidden one is filled.
    segmentation: Literal["slic", "felzenszwalb", "quickshift", "grid"] = "slic"
    n_segments: int = Field(default=16, ge=2, le=1024)
    grid_cells: int = Field(default=4, ge=1, le=64)
    hide: Literal["mean", "baseline"] = "mean"
    baseline: str | None = None  # with hide = "baseline"; None: the model's default


def weighted_ridge(
    x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ridge with intercept and sample weights, as scikit-learn's Ridge, for N problems at
    once: x N x S x M, y N x S, weights N x S (or S). The intercept is not penalised.
    (coefficients N x M, intercepts N, weighted R² N)."""
    x, y = x.double(), y.double()
    w = weights.double().expand(y.shape)
    total = w.sum(1, keepdim=True)
    x_mean = (w.unsqueeze(2) * x).sum(1, keepdim=True) / total.unsqueeze(2)
    y_mean = (w * y).sum(1, keepdim=True) / total
    xc, yc = x - x_mean, y - y_mean
    xtw = (xc * w.unsqueeze(2)).transpose(1, 2)  # N x M x S
    eye = torch.eye(x.shape[2], dtype=x.dtype, device=x.device)
    gram = xtw @ xc + alpha * eye
    # pinv, not solve: with alpha = 0 a feature that never varies makes the system singular.
    coefficients = (torch.linalg.pinv(gram) @ (xtw @ yc.unsqueeze(2))).squeeze(2)
    intercepts = y_mean.squeeze(1) - (x_mean.squeeze(1) * coefficients).sum(1)
    residual = y - (x @ coefficients.unsqueeze(2)).squeeze(2) - intercepts[:, None]
    spread = (w * yc**2).sum(1)
    explained = 1 - (w * residual**2).sum(1) / spread.clamp_min(1e-300)
    r2 = torch.where(spread > 0, explained, torch.ones_like(explained))
    return coefficients, intercepts, r2


class Lime(PerturbationMethod[LimeParams]):
    name = "lime"
    params_type = LimeParams
    summary = "A weighted linear surrogate fitted around each instance (LIME); R² as fidelity."

    def check(self, model: Model) -> None:
        if model.config.task is Task.TABULAR_CLASSIFICATION and model.background is None:
            raise ConfigError(
                "config.yaml",
                "methods",
                "lime samples tabular rows with the spread of the training data: give the "
                "model background rows (field background)",
            )

    def check_params(self, model: Model, params: LimeParams) -> None:
        require_baseline(model, params.baseline)

    def run_group(
        self, model: Model, batch: Batch, params: LimeParams, evaluator: Evaluator
    ) -> Attribution:
        if model.config.task is Task.TABULAR_CLASSIFICATION:
            return self._tabular(model, batch, params, evaluator)
        return self._image(model, batch, params, evaluator)

    def _evaluate(
        self,
        model: Model,
        batch: Batch,
        evaluator: Evaluator,
        count: int,
        build: _Builder,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """(outputs N x C, targets N, scores N x done, done): the model at the inputs, then
        at `count` perturbed inputs per instance, built and evaluated a round at a time."""
        inputs = batch.inputs
        n = inputs.shape[0]
        evaluator.planned = n + n * count
        outputs = evaluator.outputs(inputs)
        targets = torch.where(batch.targets < 0, outputs.argmax(1), batch.targets)
        per_round = max(1, evaluator.max_rows // max(1, n))
        scores = []
        done = 0
        while done < count:
            size = min(per_round, count - done)
            if not evaluator.afford(n * size):
                break
            probabilities = evaluator.probabilities(build(done, done + size))
            scores.append(target_scores(probabilities, targets, size))
            done += size
        found = torch.cat(scores, 1) if scores else torch.zeros(n, 0, device=inputs.device)
        return outputs, targets, found, done

    def _tabular(
        self, model: Model, batch: Batch, params: LimeParams, evaluator: Evaluator
    ) -> Attribution:
        assert model.background is not None
        inputs = batch.inputs
        n, width = inputs.shape[0], math.prod(inputs.shape[1:])
        std = model.background.std.reshape(1, width)
        std = torch.where(std > 0, std, torch.ones_like(std))
        # Standard normal draws, shared by the instances; the first sample is the instance.
        noise = torch.randn(params.n_samples, width, generator=generator(batch))
        noise[0] = 0
        noise = noise.to(inputs.device, inputs.dtype)
        flat = inputs.reshape(n, width)

        def build(start: int, stop: int) -> torch.Tensor:
            rows = flat[:, None, :] + noise[None, start:stop] * std[:, None, :]
            return rows.reshape(-1, *inputs.shape[1:])

        outputs, targets, scores, done = self._evaluate(
            model, batch, evaluator, params.n_samples, build
        )
        width_kernel = params.kernel_width or 0.75 * math.sqrt(width)
        design = noise[:done].double()  # standardised differences from the instance
        distances = design.norm(dim=1)
        weights = torch.sqrt(torch.exp(-(distances**2) / width_kernel**2))
        coefficients, _, r2 = weighted_ridge(
            design.expand(n, -1, -1), scores, weights, params.alpha
        )
        features = tabular_features(flat)
        return self._attribution(features, outputs, targets, coefficients, r2, evaluator, False)

    def _image(
        self, model: Model, batch: Batch, params: LimeParams, evaluator: Evaluator
    ) -> Attribution:
        inputs = batch.inputs
        if params.segmentation == "grid":
            features = grid_features(inputs, params.grid_cells)
        else:
            features = superpixel_features(inputs, params.segmentation, params.n_segments)
        if params.hide == "mean":
            hidden = segment_means(inputs, features)
        else:
            hidden = model.baseline(params.baseline).tensor.expand_as(inputs)
        # Which features each sample keeps, shared by the instances; the first keeps all.
        kept = feature_draws(batch, params.n_samples, features.count) < 0.5
        kept[0] = True
        kept = kept.to(inputs.device)

        def build(start: int, stop: int) -> torch.Tensor:
            masks = features.masks(kept[start:stop])  # N x S x shape
            rows = torch.where(masks, inputs.unsqueeze(1), hidden.unsqueeze(1))
            return rows.reshape(-1, *inputs.shape[1:])

        outputs, targets, scores, done = self._evaluate(
            model, batch, evaluator, params.n_samples, build
        )
        valid = features.valid()  # N x M
        # A feature an instance does not have is kept in every sample: constant, it gets 0.
        design = torch.where(valid[:, None, :], kept[None, :done], True).double()
        ones = torch.ones_like(design)
        cosine = (design * ones).sum(2) / (design.norm(dim=2) * ones.norm(dim=2)).clamp_min(1e-12)
        distances = 1 - cosine
        width_kernel = params.kernel_width or 0.25
        weights = torch.sqrt(torch.exp(-(distances**2) / width_kernel**2))
        coefficients, _, r2 = weighted_ridge(design, scores, weights, params.alpha)
        coefficients = torch.where(valid, coefficients, torch.zeros_like(coefficients))
        return self._attribution(features, outputs, targets, coefficients, r2, evaluator, True)

    def _attribution(
        self,
        features: Features,
        outputs: torch.Tensor,
        targets: torch.Tensor,
        coefficients: torch.Tensor,
        r2: torch.Tensor,
        evaluator: Evaluator,
        spread: bool,
    ) -> Attribution:
        values = coefficients.to(outputs.dtype)
        attributions = features.paint(values) if spread else values.reshape(outputs.shape[0], -1)
        n = outputs.shape[0]
        return Attribution(
            attributions=attributions.reshape(features.index.shape),
            outputs=outputs,
            targets=targets,
            evaluations_per_instance=math.ceil(evaluator.evaluations / max(1, n)),
            stopped_by=evaluator.stopped_by,
            local_fidelity=r2,
        )


def segment_means(inputs: torch.Tensor, features: Features) -> torch.Tensor:
    """Each element replaced by the mean of its feature's elements in the same channel
    (the `lime` package's hide colour for a superpixel)."""
    n, channels = inputs.shape[:2]
    index = features.index.reshape(n, channels, -1)
    values = inputs.reshape(n, channels, -1)
    sums = torch.zeros(n, channels, features.count, dtype=inputs.dtype, device=inputs.device)
    sums.scatter_add_(2, index, values)
    sizes = torch.zeros_like(sums)
    sizes.scatter_add_(2, index, torch.ones_like(values))
    means = sums / sizes.clamp_min(1)
    return means.gather(2, index).reshape(inputs.shape)
