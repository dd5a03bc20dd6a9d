"""Shapley values of the explained class's probability: `kernel_shap` (sampled) and
`exact_shapley` (enumerated, up to 12 features).

The value of a coalition S is interventional, as in KernelSHAP: v(S) = E_b f(x_S, b_not S), the
mean over the reference rows b (the model's background data, or one baseline) of the model on
the instance's features in S and the reference's elsewhere. The attributions sum to
v(all) - v(none) = f(x) - E_b f(b), which each response reports as its completeness error.

Written here rather than taken from Captum or shap: Captum's KernelShap explains one instance
per call, samples without pairing and does not enforce the sum; shap's KernelExplainer runs
numpy on the host one instance at a time. Here the coalitions of one job are shared by all
its instances, so every model call holds several instances x coalitions x references, on the
model's device. Tests compare both methods with a plain enumeration of the Shapley formula.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from pydantic import Field

from sidelight.errors import ConfigError, InvalidParams
from sidelight.methods.base import Attribution, Batch, Params, SeededParams
from sidelight.methods.perturbation import (
    Evaluator,
    Features,
    PerturbationMethod,
    compose,
    generator,
    grid_features,
    tabular_features,
    target_scores,
)
from sidelight.models.config import Task
from sidelight.models.model import Model

MAX_EXACT_FEATURES = 12


class ShapleyParams(Params):
    # The reference rows: "background" (the model's background data) or a baseline's name.
    # None: the background when the model has one, else its default baseline.
    reference: str | None = None
    # Images: features are the cells of a grid_cells x grid_cells grid.
    grid_cells: int = Field(default=4, ge=1, le=64)


class KernelShapParams(ShapleyParams, SeededParams):
    # Coalitions per instance. When all 2^M - 2 proper coalitions fit, they are enumerated
    # with their exact kernel weights and the values are exact.
    n_samples: int = Field(default=2048, ge=2, le=1 << 20)
    # Each sampled coalition with its complement (Covert & Lee 2021: lower variance).
    paired: bool = True


class ExactShapleyParams(ShapleyParams):
    # 3 x 3 = 9 cells: 512 coalitions per instance (4 x 4 would be 65,536).
    grid_cells: int = Field(default=3, ge=1, le=64)


def features_for(model: Model, inputs: torch.Tensor, grid_cells: int) -> Features:
    if model.config.task is Task.TABULAR_CLASSIFICATION:
        return tabular_features(inputs.reshape(inputs.shape[0], -1))
    return grid_features(inputs, grid_cells)


def references_for(model: Model, name: str | None) -> tuple[torch.Tensor, str]:
    """K x input shape reference rows and their digest."""
    if name == "background" or (name is None and model.background is not None):
        if model.background is None:
            raise InvalidParams(
                "params.reference",
                f"model {model.name!r} has no background data; name one of its baselines "
                f"{sorted(model.baselines)}",
            )
        return model.background.tensor, model.background.digest
    if name is not None and name not in model.baselines:
        raise InvalidParams(
            "params.reference",
            f"{name!r} is neither 'background' nor a baseline of model {model.name!r} "
            f"({sorted(model.baselines)})",
        )
    baseline = model.baseline(name)
    return baseline.tensor, baseline.digest


def _feature_count(model: Model, params: ShapleyParams) -> int:
    if model.config.task is Task.TABULAR_CLASSIFICATION:
        return math.prod(model.input_shape)
    return params.grid_cells**2


def all_coalitions(count: int, device: torch.device) -> torch.Tensor:
    """2^count x count bool: every subset, the empty one first and the full one last."""
    codes = torch.arange(2**count, device=device)
    bits = 2 ** torch.arange(count, device=device)
    return (codes[:, None] & bits[None, :]) != 0


def shapley_kernel(sizes: torch.Tensor, count: int) -> torch.Tensor:
    """The Shapley kernel (M - 1) / (C(M, s) s (M - s)) for coalition sizes 0 < s < M."""
    m = torch.tensor(float(count), dtype=torch.float64)
    s = sizes.to(torch.float64)
    log_binomial = torch.lgamma(m + 1) - torch.lgamma(s + 1) - torch.lgamma(m - s + 1)
    return (m - 1) / (torch.exp(log_binomial) * s * (m - s))


def sample_coalitions(
    count: int, samples: int, paired: bool, rng: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(S x count bool coalitions, S weights). Enumerates every proper coalition with its
    kernel weight when they fit in `samples`; else draws sizes from the kernel's distribution
    over sizes, (M-1)/(s(M-s)), and members uniformly, so each draw has weight 1."""
    if 2**count - 2 <= samples:
        coalitions = all_coalitions(count, torch.device("cpu"))[1:-1]
        return coalitions, shapley_kernel(coalitions.sum(1), count)
    sizes = torch.arange(1, count, dtype=torch.float64)
    size_weights = (count - 1) / (sizes * (count - sizes))
    draws = samples // 2 if paired else samples
    size = 1 + torch.multinomial(size_weights, draws, replacement=True, generator=rng)
    # A random permutation per draw; its first `size` members join the coalition.
    order = torch.rand(draws, count, generator=rng).argsort(1)
    ranks = order.argsort(1)
    coalitions = ranks < size[:, None]
    if paired:
        coalitions = torch.cat([coalitions, ~coalitions])
    return coalitions, torch.ones(coalitions.shape[0], dtype=torch.float64)


def constrained_fit(
    coalitions: torch.Tensor,
    weights: torch.Tensor,
    values: torch.Tensor,
    empty: torch.Tensor,
    full: torch.Tensor,
) -> torch.Tensor:
    """Weighted least squares phi with sum(phi) = full - empty and intercept `empty`:
    min sum_s w_s (v_s - empty - z_s . phi)^2. coalitions S x M, weights S, values N x S,
    empty and full N. The last feature is eliminated by the constraint; a pseudo-inverse keeps
    a partial fit (fewer coalitions than features) defined."""
    z = coalitions.to(torch.float64)
    m = z.shape[1]
    gap = (full - empty).to(torch.float64)  # N
    if m == 1:
        return gap[:, None]
    x = z[:, :-1] - z[:, -1:]  # S x (M-1)
    y = values.to(torch.float64) - empty[:, None] - z[None, :, -1] * gap[:, None]  # N x S
    root = weights.to(torch.float64).sqrt()
    beta = torch.linalg.pinv(root[:, None] * x) @ (root[:, None] * y.T)  # (M-1) x N
    last = gap - beta.sum(0)
    return torch.cat([beta.T, last[:, None]], dim=1)


@dataclass(frozen=True)
class _Evaluated:
    """What one group's evaluations gave: values of v at the coalitions evaluated so far."""

    features: Features
    outputs: torch.Tensor  # N x C raw outputs at the inputs
    targets: torch.Tensor  # N
    empty: torch.Tensor  # N: v(no feature) = E_b f(b) at each target
    full: torch.Tensor  # N: v(every feature) = f(x) at each target
    values: torch.Tensor  # N x done: v at the first `done` coalitions
    done: int


class _Shapley(PerturbationMethod[ShapleyParams]):
    def check_params(self, model: Model, params: ShapleyParams) -> None:
        references_for(model, params.reference)

    def _evaluate(
        self,
        model: Model,
        batch: Batch,
        params: ShapleyParams,
        evaluator: Evaluator,
        coalitions: torch.Tensor,
    ) -> _Evaluated:
        """v at the inputs, at the references, and at each coalition, in rounds of at most
        max_rows rows, until done or stopped."""
        inputs = batch.inputs
        n = inputs.shape[0]
        references, _ = references_for(model, params.reference)
        features = features_for(model, inputs, params.grid_cells)
        k = references.shape[0]
        evaluator.planned = n + k + n * coalitions.shape[0] * k
        outputs = evaluator.outputs(inputs)
        targets = torch.where(batch.targets < 0, outputs.argmax(1), batch.targets)
        full = model.probabilities(outputs).gather(1, targets[:, None]).squeeze(1)
        empty = evaluator.probabilities(references)[:, targets].mean(0)  # N
        per_round = max(1, evaluator.max_rows // max(1, n * k))
        values = []
        done = 0
        while done < coalitions.shape[0]:
            chunk = coalitions[done : done + per_round].to(inputs.device)
            if not evaluator.afford(n * chunk.shape[0] * k):
                break
            probabilities = evaluator.probabilities(
                compose(inputs, references, features.masks(chunk))
            )
            scores = target_scores(probabilities, targets, chunk.shape[0] * k)
            values.append(scores.reshape(n, chunk.shape[0], k).mean(2))
            done += chunk.shape[0]
        value = torch.cat(values, 1) if values else torch.zeros(n, 0, device=inputs.device)
        return _Evaluated(features, outputs, targets, empty, full, value, done)

    def _attribution(
        self, seen: _Evaluated, phi: torch.Tensor, evaluator: Evaluator
    ) -> Attribution:
        gap = (seen.full - seen.empty).to(torch.float64)
        phi = phi.to(torch.float64)
        n = seen.outputs.shape[0]
        return Attribution(
            attributions=seen.features.paint(phi.to(seen.outputs.dtype)),
            outputs=seen.outputs,
            targets=seen.targets,
            evaluations_per_instance=math.ceil(evaluator.evaluations / max(1, n)),
            completeness_error=phi.sum(1) - gap,
            reference_gap=gap,
            stopped_by=evaluator.stopped_by,
        )


class KernelShap(_Shapley):
    name = "kernel_shap"
    params_type = KernelShapParams
    summary = "Shapley values by weighted regression on sampled feature coalitions (KernelSHAP)."

    def run_group(
        self, model: Model, batch: Batch, params: ShapleyParams, evaluator: Evaluator
    ) -> Attribution:
        assert isinstance(params, KernelShapParams)
        count = _feature_count(model, params)
        coalitions, weights = sample_coalitions(
            count, params.n_samples, params.paired, generator(batch)
        )
        seen = self._evaluate(model, batch, params, evaluator, coalitions)
        device = seen.values.device
        phi = constrained_fit(
            coalitions[: seen.done].to(device),
            weights[: seen.done].to(device),
            seen.values,
            seen.empty.double(),
            seen.full.double(),
        )
        return self._attribution(seen, phi, evaluator)


class ExactShapley(_Shapley):
    name = "exact_shapley"
    params_type = ExactShapleyParams
    summary = "Exact Shapley values by enumerating every coalition (at most 12 features)."

    def check(self, model: Model) -> None:
        if model.config.task is Task.TABULAR_CLASSIFICATION:
            count = math.prod(model.input_shape)
            if count > MAX_EXACT_FEATURES:
                raise ConfigError(
                    "config.yaml",
                    "methods",
                    f"exact_shapley enumerates 2^M coalitions and takes at most "
                    f"{MAX_EXACT_FEATURES} features; this model has {count} (use kernel_shap)",
                )

    def check_params(self, model: Model, params: ShapleyParams) -> None:
        super().check_params(model, params)
        count = _feature_count(model, params)
        if count > MAX_EXACT_FEATURES:
            field = (
                "params.grid_cells" if model.config.task is Task.IMAGE_CLASSIFICATION else "method"
            )
            raise InvalidParams(
                field,
                f"exact_shapley enumerates 2^M coalitions and takes at most {MAX_EXACT_FEATURES} "
                f"features; model {model.name!r} has {count} here (use kernel_shap)",
            )

    def run_group(
        self, model: Model, batch: Batch, params: ShapleyParams, evaluator: Evaluator
    ) -> Attribution:
        count = _feature_count(model, params)
        coalitions = all_coalitions(count, torch.device("cpu"))
        seen = self._evaluate(model, batch, params, evaluator, coalitions)
        device = seen.values.device
        if seen.done == coalitions.shape[0]:
            phi = seen.values.to(torch.float64) @ shapley_matrix(count).to(device)
        else:
            # Stopped early: the kernel regression on the proper coalitions evaluated so far
            # (the empty one is first, the full one last) is the best estimate there is.
            proper = coalitions[1 : max(1, seen.done)]
            phi = constrained_fit(
                proper.to(device),
                shapley_kernel(proper.sum(1), count).to(device),
                seen.values[:, 1 : 1 + proper.shape[0]],
                seen.empty.double(),
                seen.full.double(),
            )
        return self._attribution(seen, phi, evaluator)


def shapley_matrix(count: int) -> torch.Tensor:
    """2^M x M: phi = v @ this, for v over `all_coalitions(M)`. Entry (S, i) is
    |S|-1)! (M-|S|)! / M! when i is in S, and -|S|! (M-|S|-1)! / M! when not."""
    coalitions = all_coalitions(count, torch.device("cpu"))
    sizes = coalitions.sum(1).to(torch.float64)[:, None]
    m = float(count)

    def weight(s: torch.Tensor) -> torch.Tensor:  # s! (M - s - 1)! / M!
        return torch.exp(torch.lgamma(s + 1) + torch.lgamma(m - s) - math.lgamma(m + 1))

    inside = weight((sizes - 1).clamp_min(0))
    outside = weight(sizes.clamp_max(m - 1))
    return torch.where(coalitions, inside, -outside)
