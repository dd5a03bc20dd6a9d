"""Score given attributions for faithfulness, on demand (the Evaluate RPC)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from sidelight.methods.base import Params
from sidelight.methods.catalog import AnyMethod
from sidelight.models.model import Model
from sidelight.quality.curves import Curve, Reference, curve, element_scores, random_curve
from sidelight.quality.scores import infidelity, max_sensitivity

METRICS = ("deletion", "insertion", "infidelity", "max_sensitivity")
DEFAULT_METRICS = ("deletion", "insertion", "infidelity")


@dataclass(frozen=True)
class FaithfulnessScores:
    reference: str
    steps: int
    deletion_auc: list[float] = field(default_factory=list)
    insertion_auc: list[float] = field(default_factory=list)
    random_deletion_auc: list[float] = field(default_factory=list)
    random_insertion_auc: list[float] = field(default_factory=list)
    infidelity: list[float] = field(default_factory=list)
    max_sensitivity: list[float] = field(default_factory=list)
    evaluations: int = 0


def default_reference(inputs: torch.Tensor) -> Reference:
    """Blur for images (a zero baseline leaves sparse images' curves at chance), the model's
    baseline for rows."""
    return Reference.BLUR if inputs.dim() == 4 else Reference.BASELINE


def evaluate(
    model: Model,
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    targets: torch.Tensor,
    metrics: Sequence[str],
    *,
    steps: int = 16,
    reference: Reference | None = None,
    method: AnyMethod | None = None,
    params: Params | None = None,
    seed: int = 0,
    max_rows: int = 4096,
) -> FaithfulnessScores:
    """`targets` are final (no -1). Curves and infidelity need only forward passes;
    max-sensitivity runs `method` again on perturbed inputs."""
    chosen = reference or default_reference(inputs)
    found: dict[str, list[float]] = {}
    evaluations = 0
    scores = element_scores(attributions, inputs)
    for kind in (Curve.DELETION, Curve.INSERTION):
        if kind.value not in metrics:
            continue
        measured = curve(
            model, inputs, scores, targets, kind, steps=steps, reference=chosen, max_rows=max_rows
        )
        chance = random_curve(
            model,
            inputs,
            targets,
            kind,
            steps=steps,
            reference=chosen,
            seed=seed,
            max_rows=max_rows,
        )
        found[f"{kind.value}_auc"] = measured.auc.tolist()
        found[f"random_{kind.value}_auc"] = chance.auc.tolist()
        evaluations += measured.evaluations + chance.evaluations
    if "infidelity" in metrics:
        samples = 16
        found["infidelity"] = infidelity(
            model, inputs, attributions, targets, samples=samples, seed=seed, max_rows=max_rows
        ).tolist()
        evaluations += 2 * samples * inputs.shape[0]
    if "max_sensitivity" in metrics:
        assert method is not None and params is not None
        samples = 8
        found["max_sensitivity"] = max_sensitivity(
            model, method, params, inputs, targets, samples=samples, seed=seed, max_rows=max_rows
        ).tolist()
    return FaithfulnessScores(reference=chosen.value, steps=steps, evaluations=evaluations, **found)
