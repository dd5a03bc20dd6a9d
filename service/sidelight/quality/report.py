"""The quality table of docs/quality.md: every method of a model, scored on held-out inputs.

    sidelight quality-report --model-repository var/model-repository --out docs/quality.md

For each method: deletion and insertion AUC against a random ranking (blurred reference for
images, the model's baseline for rows), infidelity, the completeness error where the method
promises one, and for synchronous methods the cascading-randomization Spearman (|values|, over
all elements and over the input's non-zero ones). Methods run with their default parameters,
except where the parameter list below says otherwise (to keep the run to minutes).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sidelight.methods.base import Batch, Mode
from sidelight.methods.catalog import METHODS, parse_params
from sidelight.models.model import Model
from sidelight.quality.curves import Curve, curve, element_scores, random_curve
from sidelight.quality.evaluate import default_reference
from sidelight.quality.sanity import randomization_test
from sidelight.quality.scores import infidelity

# Cheaper than the defaults where a method is costly; the table says which.
REPORT_PARAMS: dict[str, dict[str, Any]] = {
    "kernel_shap": {"n_samples": 512, "seed": 1},
    "lime": {"n_samples": 500, "seed": 1},
    "rise": {"n_masks": 500, "seed": 1},
    "smoothgrad": {"seed": 1},
    "vargrad": {"seed": 1},
}


@dataclass(frozen=True)
class Row:
    model: str
    method: str
    params: dict[str, Any]
    deletion: float
    random_deletion: float
    insertion: float
    random_insertion: float
    infidelity: float
    completeness: float | None  # median relative completeness error
    spearman_abs: float | None  # after full cascading randomization
    spearman_abs_nonzero: float | None
    seconds: float


def score_method(model: Model, name: str, inputs: torch.Tensor, *, sanity: bool = True) -> Row:
    method = METHODS[name]
    params_raw = REPORT_PARAMS.get(name, {})
    params = parse_params(method, params_raw)
    started = time.perf_counter()
    n = inputs.shape[0]
    with torch.no_grad():
        targets = model.module(inputs).argmax(1)
    result = method.attribute(
        model, Batch(inputs, targets, torch.ones(n, dtype=torch.int64)), params, 4096
    )
    maps = result.attributions.float()
    scores = element_scores(maps, inputs)
    reference = default_reference(inputs)
    figures: dict[str, float] = {}
    for kind in (Curve.DELETION, Curve.INSERTION):
        figures[kind.value] = float(
            curve(model, inputs, scores, targets, kind, reference=reference).auc.mean()
        )
        figures[f"random_{kind.value}"] = float(
            random_curve(model, inputs, targets, kind, reference=reference).auc.mean()
        )
    completeness = None
    if result.completeness_error is not None and result.reference_gap is not None:
        gap = result.reference_gap.abs().clamp_min(1e-12)
        completeness = float((result.completeness_error.abs() / gap).median())
    spearman = spearman_nonzero = None
    if sanity and method.mode is Mode.SYNC:
        last = randomization_test(model, method, params, inputs).rows[-1]
        spearman, spearman_nonzero = last.spearman_abs, last.spearman_abs_nonzero
    return Row(
        model=model.name,
        method=name,
        params=params_raw,
        deletion=figures["deletion"],
        random_deletion=figures["random_deletion"],
        insertion=figures["insertion"],
        random_insertion=figures["random_insertion"],
        infidelity=float(infidelity(model, inputs, maps, targets, samples=16).mean()),
        completeness=completeness,
        spearman_abs=spearman,
        spearman_abs_nonzero=spearman_nonzero,
        seconds=time.perf_counter() - started,
    )


def _cell(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def markdown(rows: list[Row], header: str) -> str:
    lines = [
        header,
        "",
        "| model | method | deletion AUC ↓ (random) | insertion AUC ↑ (random) | infidelity ↓ "
        "| completeness error (median) | randomized: Spearman |·| all / non-zero ↓ | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        params = ", ".join(f"{k}={v}" for k, v in row.params.items() if k != "seed")
        name = f"`{row.method}`" + (f" ({params})" if params else "")
        marks = {
            "deletion": "✓" if row.deletion < row.random_deletion else "✗",
            "insertion": "✓" if row.insertion > row.random_insertion else "✗",
        }
        sanity = (
            "—"
            if row.spearman_abs is None
            else f"{_cell(row.spearman_abs)} / {_cell(row.spearman_abs_nonzero)}"
        )
        lines.append(
            f"| {row.model} | {name} | {_cell(row.deletion)} ({_cell(row.random_deletion)}) "
            f"{marks['deletion']} | {_cell(row.insertion)} ({_cell(row.random_insertion)}) "
            f"{marks['insertion']} | {row.infidelity:.2e} | {_cell(row.completeness, 4)} "
            f"| {sanity} | {row.seconds:.1f} |"
        )
    return "\n".join(lines) + "\n"


def held_out(model: Model, count: int) -> torch.Tensor:
    """The first `count` of a demo model's held-out inputs (the split its build kept out)."""
    from sidelight.demo.build import held_out_inputs

    return torch.from_numpy(np.ascontiguousarray(held_out_inputs(model.name)[:count]))
